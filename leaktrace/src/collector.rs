//! Taking the records the BPF programs send out of the ring buffer, also while a long
//! snapshot walk runs, and decoding them. The collector is thin on purpose: it turns bytes
//! into [`Record`]s and hands them to the model.

use std::{os::fd::AsRawFd as _, time::Duration};

use aya::maps::{MapData, RingBuf};
use leaktrace_common::Record;

/// Hands every record waiting in the ring buffer to `each`; how many there were.
pub fn drain(rb: &mut RingBuf<MapData>, mut each: impl FnMut(Record)) -> usize {
    let mut n = 0;
    while let Some(item) = rb.next() {
        if let Some(rec) = decode(&item) {
            each(rec);
        }
        n += 1;
    }
    n
}

/// Runs `work` on a thread of its own while this one keeps draining the ring buffer into
/// `each`. A walk of 100,000 goroutines takes about a second, in which a busy target's
/// probes would otherwise fill the buffer and lose records.
pub fn while_draining<T: Send>(
    rb: &mut RingBuf<MapData>,
    work: impl FnOnce() -> T + Send,
    mut each: impl FnMut(Record),
) -> T {
    std::thread::scope(|s| {
        let worker = s.spawn(work);
        while !worker.is_finished() {
            if drain(rb, &mut each) == 0 {
                wait_readable(rb, Duration::from_millis(5));
            }
        }
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Blocks until the ring buffer has a record or `timeout` passes.
fn wait_readable(rb: &RingBuf<MapData>, timeout: Duration) {
    let mut fd = libc::pollfd {
        fd: rb.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call; the descriptor is the ring
    // buffer's, open as long as `rb` is borrowed.
    unsafe { libc::poll(&mut fd, 1, timeout.as_millis() as libc::c_int) };
}

/// Decodes one ring-buffer item. Items of the wrong size (a mismatched BPF object) are
/// rejected rather than misread.
pub fn decode(bytes: &[u8]) -> Option<Record> {
    if bytes.len() != size_of::<Record>() {
        return None;
    }
    // SAFETY: the length is checked above, Record is plain old data of integers, and
    // read_unaligned copes with the ring buffer's 8-byte alignment not being guaranteed here.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Record>()) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use leaktrace_common::RecordKind;

    #[test]
    fn decodes_a_record_and_refuses_other_sizes() {
        let r = Record {
            ts_ns: 1,
            goid: 42,
            kind: RecordKind::Park as u8,
            reason: 15,
            ..Record::default()
        };
        // SAFETY: viewing a repr(C) value as bytes for the test.
        let bytes = unsafe {
            std::slice::from_raw_parts((&r as *const Record).cast::<u8>(), size_of::<Record>())
        };
        assert_eq!(decode(bytes), Some(r));
        assert_eq!(decode(&bytes[1..]), None);
        assert_eq!(
            size_of::<Record>(),
            48,
            "the record layout is shared with the BPF side"
        );
    }
}
