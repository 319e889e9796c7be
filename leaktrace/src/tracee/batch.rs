//! Many ranges of the target's memory in few system calls: `process_vm_readv` takes up to
//! IOV_MAX remote ranges at once, so a snapshot of 100,000 goroutines is a few hundred calls
//! instead of 100,000. A range that cannot be read (its memory was freed and unmapped while
//! the target ran on) costs that range alone, not its batch: the call stops at the first
//! range it cannot copy and the batch resumes after it.

use std::io;

use super::process::Process;

/// Remote ranges per `process_vm_readv` call: IOV_MAX on Linux (UIO_MAXIOV).
pub const IOV_MAX: usize = 1024;

/// Reads `ranges` into `buf`, back to back in order (`ranges[i]` lands in the next `len`
/// bytes), and says for each whether it was read whole. A range that was not is left
/// zero-filled. Fails only when the target cannot be read at all: it exited (ESRCH) or
/// leaktrace may not read it (EPERM).
pub fn read_ranges(
    process: &Process,
    ranges: &[(u64, usize)],
    buf: &mut [u8],
) -> io::Result<Vec<bool>> {
    let total: usize = ranges.iter().map(|r| r.1).sum();
    if total > buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a buffer of {} bytes cannot hold {total} bytes of ranges",
                buf.len()
            ),
        ));
    }
    let mut ok = vec![false; ranges.len()];
    let mut remote: Vec<libc::iovec> = Vec::with_capacity(IOV_MAX.min(ranges.len()));
    // (first range of the call, its offset in buf)
    let (mut first, mut offset) = (0usize, 0usize);
    while first < ranges.len() {
        let end = (first + IOV_MAX).min(ranges.len());
        remote.clear();
        remote.extend(ranges[first..end].iter().map(|&(addr, len)| libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: len,
        }));
        let bytes: usize = ranges[first..end].iter().map(|r| r.1).sum();
        let local = libc::iovec {
            iov_base: buf[offset..].as_mut_ptr().cast(),
            iov_len: bytes,
        };
        // SAFETY: `local` covers `bytes` bytes of `buf` from `offset`, which we own mutably
        // (total <= buf.len() was checked); the remote ranges are only read, and checked,
        // by the kernel.
        let n = unsafe {
            libc::process_vm_readv(
                process.pid() as i32,
                &local,
                1,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        };
        let copied = if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EFAULT | libc::ENOMEM) => 0,
                _ => return Err(e),
            }
        } else {
            n as usize
        };
        // Ranges copied whole are done; the call stopped in (or before) the next one.
        let mut done = 0;
        let mut i = first;
        while i < end && done + ranges[i].1 <= copied {
            done += ranges[i].1;
            ok[i] = true;
            i += 1;
        }
        if i < end {
            let len = ranges[i].1;
            buf[offset + done..offset + done + len].fill(0);
            done += len;
            i += 1;
        }
        first = i;
        offset += done;
    }
    Ok(ok)
}

/// The longest stretch of the target [`read_coalesced`] reads as one range.
const MAX_SPAN: u64 = 256 << 10;

/// [`read_ranges`], with ranges that lie at most `max_gap` bytes apart in the target read as
/// one: the kernel pins the target's pages once per range, so 100,000 g structs packed in
/// their spans cost a few hundred ranges instead of 100,000. A merged stretch that cannot
/// be read whole (a gap fell on unmapped memory) is read range by range.
pub fn read_coalesced(
    process: &Process,
    ranges: &[(u64, usize)],
    buf: &mut [u8],
    max_gap: u64,
) -> io::Result<Vec<bool>> {
    let mut offsets = Vec::with_capacity(ranges.len());
    let mut total = 0usize;
    for r in ranges {
        offsets.push(total);
        total += r.1;
    }
    if total > buf.len() {
        return read_ranges(process, ranges, buf); // says what is wrong
    }
    let mut ok = vec![false; ranges.len()];
    visit_coalesced(process, ranges, max_gap, &mut Vec::new(), |i, bytes| {
        let out = &mut buf[offsets[i]..offsets[i] + ranges[i].1];
        match bytes {
            Some(b) => {
                out.copy_from_slice(b);
                ok[i] = true;
            }
            None => out.fill(0),
        }
    })?;
    Ok(ok)
}

/// Reads `ranges` like [`read_coalesced`] and hands each to `visit` where it lies in the
/// stretch read (no copy out), by its index in `ranges`, in the target's address order;
/// `None` for a range that could not be read. `scratch` holds the stretches: a caller that
/// reads many batches passes the same one, whose pages are then faulted in once.
pub fn visit_coalesced(
    process: &Process,
    ranges: &[(u64, usize)],
    max_gap: u64,
    scratch: &mut Vec<u8>,
    mut visit: impl FnMut(usize, Option<&[u8]>),
) -> io::Result<()> {
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    // Stable: it merges the ascending runs that ranges listed in allocation order mostly are.
    order.sort_by_key(|&i| ranges[i].0);
    // (start, end) of each stretch, and where its ranges begin in `order`.
    let mut spans: Vec<(u64, u64, usize)> = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        let (addr, len) = ranges[i];
        let end = addr.saturating_add(len as u64);
        match spans.last_mut() {
            Some((start, span_end, _))
                if addr <= span_end.saturating_add(max_gap)
                    && end.max(*span_end) - *start <= MAX_SPAN =>
            {
                *span_end = (*span_end).max(end);
            }
            _ => spans.push((addr, end, k)),
        }
    }
    let span_ranges: Vec<(u64, usize)> = spans
        .iter()
        .map(|&(start, end, _)| (start, (end - start) as usize))
        .collect();
    let total: usize = span_ranges.iter().map(|r| r.1).sum();
    // Every byte is written by the read (or zero-filled where it fails): no need to clear.
    if scratch.len() < total {
        scratch.resize(total, 0);
    }
    let span_ok = read_ranges(process, &span_ranges, &mut scratch[..total])?;
    let mut retry = Vec::new();
    let mut at = 0usize;
    for (s, &(start, end, first)) in spans.iter().enumerate() {
        let last = spans.get(s + 1).map_or(order.len(), |n| n.2);
        for &i in &order[first..last] {
            let (addr, len) = ranges[i];
            if span_ok[s] {
                let from = at + (addr - start) as usize;
                visit(i, Some(&scratch[from..from + len]));
            } else {
                retry.push(i);
            }
        }
        at += (end - start) as usize;
    }
    if !retry.is_empty() {
        let again: Vec<(u64, usize)> = retry.iter().map(|&i| ranges[i]).collect();
        let mut bytes = vec![0u8; again.iter().map(|r| r.1).sum()];
        let again_ok = read_ranges(process, &again, &mut bytes)?;
        let mut from = 0;
        for (&i, read) in retry.iter().zip(again_ok) {
            let len = ranges[i].1;
            visit(i, read.then(|| &bytes[from..from + len]));
            from += len;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_past_an_unreadable_one_are_still_read() {
        let p = Process::open(std::process::id()).unwrap();
        let words: Vec<u64> = (1..=3000).collect();
        let base = words.as_ptr() as u64;
        // 2,500 ranges (more than one call), one of which is page 0, never mapped.
        let mut ranges: Vec<(u64, usize)> = (0..2500).map(|i| (base + i * 8, 8)).collect();
        ranges[1500] = (8, 8);
        let mut buf = vec![0xffu8; 2500 * 8 + 3];
        let ok = read_ranges(&p, &ranges, &mut buf).unwrap();
        for (i, c) in buf[..2500 * 8].as_chunks::<8>().0.iter().enumerate() {
            let want = if i == 1500 { 0 } else { i as u64 + 1 };
            assert_eq!(u64::from_le_bytes(*c), want, "range {i}");
            assert_eq!(ok[i], i != 1500, "range {i}");
        }
        assert!(read_ranges(&p, &ranges, &mut buf[..100]).is_err());
    }

    #[test]
    fn coalesced_reads_land_in_order_and_survive_a_gap_on_unmapped_memory() {
        let p = Process::open(std::process::id()).unwrap();
        let words: Vec<u64> = (1..=3000).collect();
        let base = words.as_ptr() as u64;
        // Every third word, backwards, with page 0 (never mapped) among them and an 8-byte
        // gap from page 0 to a word at 24 (also unmapped): that stretch is retried alone.
        let mut ranges: Vec<(u64, usize)> = (0..900).rev().map(|i| (base + i * 24, 8)).collect();
        ranges.insert(300, (8, 8));
        ranges.insert(301, (24, 8));
        let mut buf = vec![0xffu8; ranges.len() * 8];
        let ok = read_coalesced(&p, &ranges, &mut buf, 16).unwrap();
        for (k, c) in buf.as_chunks::<8>().0.iter().enumerate() {
            let (addr, _) = ranges[k];
            let want = if addr < 4096 {
                0
            } else {
                (addr - base) / 8 + 1
            };
            assert_eq!(u64::from_le_bytes(*c), want, "range {k}");
            assert_eq!(ok[k], addr >= 4096, "range {k}");
        }
    }
}
