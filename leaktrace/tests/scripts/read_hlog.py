"""Reads an HdrHistogram interval log with HdrHistogram's own Python library (PyPI
hdrhistogram), independently of the Rust code that wrote it, and prints what it found as
JSON: the log's start time, every interval, and per tag all its intervals added up.

Used by leaktrace/tests/exports.rs: python read_hlog.py FILE
"""

import json
import sys

from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader

PERCENTILES = (50, 90, 99)


def summary(h):
    out = {"count": h.get_total_count(), "max": h.get_max_value(), "min": h.get_min_value()}
    for p in PERCENTILES:
        out[f"p{p}"] = h.get_value_at_percentile(p)
    return out


def main(path):
    reader = HistogramLogReader(path, None)
    intervals, tags = [], {}
    while True:
        h = reader.get_next_interval_histogram()
        if h is None:
            break
        tag = h.get_tag()
        intervals.append(
            {
                "tag": tag,
                # Absolute times in milliseconds, as the reader computes them.
                "start_ms": h.get_start_time_stamp(),
                "end_ms": h.get_end_time_stamp(),
                **summary(h),
            }
        )
        if tag not in tags:
            # Wide enough for any interval; the same precision, so the same buckets.
            tags[tag] = HdrHistogram(h.lowest_trackable_value, 2**62, h.significant_figures)
        tags[tag].add(h)
    reader.close()
    print(
        json.dumps(
            {
                "start_time_sec": reader.get_start_time_sec(),
                "intervals": intervals,
                "tags": {t: summary(h) for t, h in tags.items()},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
