//! What a goroutine blocked in a channel operation waits on: the channels in its
//! `g.waiting` list (one sudog for a send or receive, one per case for a select), and the
//! state of each channel. Read-only, like the rest of the census.

use serde::Serialize;

use super::goroutines::u64_at;
use crate::tracee::Target;

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
    let l = &target.layout.hchan;
    let mut b = vec![0u8; l.size as usize];
    target.process.read(addr, &mut b).ok()?;
    let closed = b.get(l.closed as usize..l.closed as usize + 4)?;
    Some(ChannelState {
        addr,
        len: u64_at(&b, l.qcount),
        cap: u64_at(&b, l.dataqsiz),
        closed: u32::from_le_bytes(closed.try_into().ok()?) != 0,
        receivers_waiting: u64_at(&b, l.recvq + target.layout.waitq.first) != 0,
        senders_waiting: u64_at(&b, l.sendq + target.layout.waitq.first) != 0,
        timer: l.timer.map(|t| u64_at(&b, t) != 0),
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
