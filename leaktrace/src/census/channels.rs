//! What a goroutine blocked in a channel operation waits on: the channels in its
//! `g.waiting` list (one sudog for a send or receive, one per case for a select), and the
//! state of each channel. Read-only, like the rest of the census.

use std::io;

use serde::Serialize;

use super::goroutines::u64_at;
use crate::tracee::{Target, batch, process::Process};

/// A select has at most 65536 cases (runtime/select.go); stop well before that.
const MAX_SUDOGS: usize = 1024;

/// A channel as the runtime holds it (`runtime.hchan`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChannelState {
    /// The hchan's address in the target: the channel's identity.
    pub addr: u64,
    /// Elements in the buffer, and its capacity (0: unbuffered).
    pub len: u64,
    pub cap: u64,
    pub closed: bool,
    /// Goroutines parked receiving / sending on it (`recvq` / `sendq` not empty).
    pub receivers_waiting: bool,
    pub senders_waiting: bool,
    /// The channel of a `time.Timer` or `time.Ticker` (Go 1.23+, `hchan.timer`): it will be
    /// sent to when the timer fires. None where the runtime does not record it (Go < 1.23).
    pub timer: Option<bool>,
}

/// Reads one hchan.
pub fn channel(target: &Target, addr: u64) -> Option<ChannelState> {
    let mut b = vec![0u8; target.layout.hchan.size as usize];
    target.process.read(addr, &mut b).ok()?;
    decode(target, addr, &b)
}

/// The hchan at `addr` from its bytes `b`.
fn decode(target: &Target, addr: u64, b: &[u8]) -> Option<ChannelState> {
    let l = &target.layout.hchan;
    let closed = b.get(l.closed as usize..l.closed as usize + 4)?;
    Some(ChannelState {
        addr,
        len: u64_at(b, l.qcount),
        cap: u64_at(b, l.dataqsiz),
        closed: u32::from_le_bytes(closed.try_into().ok()?) != 0,
        receivers_waiting: u64_at(b, l.recvq + target.layout.waitq.first) != 0,
        senders_waiting: u64_at(b, l.sendq + target.layout.waitq.first) != 0,
        timer: l.timer.map(|t| u64_at(b, t) != 0),
    })
}

/// The channels goroutine `g_addr` waits on, in the order of its sudogs (for a select:
/// sends first, then receives, as selectgo queues them). Empty for a goroutine not blocked
/// in a channel operation, or if it moved on while being read.
pub fn waited_on(target: &Target, g_addr: u64) -> Vec<ChannelState> {
    let Ok(mut sg) = target.process.read_u64(g_addr + target.layout.g.waiting) else {
        return Vec::new();
    };
    let s = &target.layout.sudog;
    let mut out = Vec::new();
    while sg != 0 && out.len() < MAX_SUDOGS {
        let (Ok(c), Ok(next)) = (
            target.process.read_u64(sg + s.c),
            target.process.read_u64(sg + s.waitlink),
        ) else {
            break;
        };
        if c != 0
            && let Some(ch) = channel(target, c)
        {
            out.push(ch);
        }
        sg = next;
    }
    out
}

/// What [`waited_on`] says of each goroutine of `g_addrs`, read level by level across all of
/// them: every `g.waiting` in one batch of reads, then the first sudog of every chain, the
/// second, and so on, then every distinct channel once. A snapshot of 100,000 goroutines
/// blocked on channels is a few hundred `process_vm_readv` calls, not several per
/// goroutine. A read that fails ends that goroutine's chain (or leaves that channel out)
/// only, as in [`waited_on`]; an error means the target cannot be read at all.
pub fn waited_on_all(target: &Target, g_addrs: &[u64]) -> io::Result<Vec<Vec<ChannelState>>> {
    let chans = sudog_channels(target, g_addrs)?;
    channel_states(target, chans.iter().map(Vec::as_slice))
}

/// The hchan addresses of each goroutine's sudogs (`g.waiting`, linked by `waitlink`), read
/// level by level across all of them; see [`waited_on_all`].
pub(crate) fn sudog_channels(target: &Target, g_addrs: &[u64]) -> io::Result<Vec<Vec<u64>>> {
    let p = &target.process;
    let s = &target.layout.sudog;
    // Chains as (goroutine, sudog).
    let ranges: Vec<(u64, usize)> = g_addrs
        .iter()
        .map(|&g| (g + target.layout.g.waiting, 8))
        .collect();
    let mut chains: Vec<(usize, u64)> = words(p, &ranges, target.layout.g.size)?
        .into_iter()
        .enumerate()
        .filter_map(|(i, w)| w.filter(|&sg| sg != 0).map(|sg| (i, sg)))
        .collect();
    let mut hchans: Vec<Vec<u64>> = vec![Vec::new(); g_addrs.len()];
    let mut sudogs = vec![0usize; g_addrs.len()];
    // The words to read of a sudog: `c` and `waitlink`, whichever comes first, to the other.
    let lo = s.c.min(s.waitlink);
    let len = (s.c.max(s.waitlink) + 8 - lo) as usize;
    let mut buf = Vec::new();
    while !chains.is_empty() {
        let ranges: Vec<(u64, usize)> = chains.iter().map(|&(_, sg)| (sg + lo, len)).collect();
        buf.clear();
        buf.resize(ranges.len() * len, 0);
        let ok = batch::read_coalesced(p, &ranges, &mut buf, s.size)?;
        let mut next = Vec::with_capacity(chains.len());
        for (k, (&(i, _), ok)) in chains.iter().zip(ok).enumerate() {
            if !ok {
                continue;
            }
            let b = &buf[k * len..(k + 1) * len];
            let (c, link) = (u64_at(b, s.c - lo), u64_at(b, s.waitlink - lo));
            if c != 0 {
                hchans[i].push(c);
            }
            sudogs[i] += 1;
            if link != 0 && sudogs[i] < MAX_SUDOGS {
                next.push((i, link));
            }
        }
        chains = next;
    }
    Ok(hchans)
}

/// The state of the channels at each list of hchan addresses, every distinct channel read
/// once, in batched reads; a channel that cannot be read is left out of its lists.
pub(crate) fn channel_states<'a>(
    target: &Target,
    lists: impl Iterator<Item = &'a [u64]> + Clone,
) -> io::Result<Vec<Vec<ChannelState>>> {
    let mut addrs: Vec<u64> = lists.clone().flatten().copied().collect();
    addrs.sort_unstable();
    addrs.dedup();
    let size = target.layout.hchan.size as usize;
    let ranges: Vec<(u64, usize)> = addrs.iter().map(|&a| (a, size)).collect();
    let mut buf = vec![0u8; ranges.len() * size];
    let ok = batch::read_coalesced(&target.process, &ranges, &mut buf, size as u64)?;
    let states: Vec<Option<ChannelState>> = addrs
        .iter()
        .zip(ok)
        .enumerate()
        .map(|(k, (&a, ok))| ok.then(|| decode(target, a, &buf[k * size..(k + 1) * size]))?)
        .collect();
    Ok(lists
        .map(|cs| {
            cs.iter()
                .filter_map(|c| states[addrs.binary_search(c).ok()?].clone())
                .collect()
        })
        .collect())
}

/// The u64 at each of `ranges` (8 bytes each), None where it could not be read; ranges at
/// most `max_gap` apart are read as one.
fn words(p: &Process, ranges: &[(u64, usize)], max_gap: u64) -> io::Result<Vec<Option<u64>>> {
    let mut buf = vec![0u8; ranges.len() * 8];
    let ok = batch::read_coalesced(p, ranges, &mut buf, max_gap)?;
    Ok(buf
        .as_chunks::<8>()
        .0
        .iter()
        .zip(ok)
        .map(|(w, ok)| ok.then(|| u64::from_le_bytes(*w)))
        .collect())
}
