//! Reading the target's machine code (never changing it): where a function returns.
//!
//! uretprobes replace a return address on the stack, which Go's stack copying and
//! tracebacks do not survive; the value a Go function returns is read instead by uprobes
//! on each of its `RET` instructions.

use iced_x86::{Decoder, DecoderOptions, Mnemonic};

use super::binary::GoBinary;

/// The link-time addresses of every `RET` in `name`, or None when the function is not in
/// the binary. The function's range from pclntab may include padding, which decodes as
/// `int3` and is skipped.
pub fn ret_addresses(binary: &GoBinary, name: &str) -> Option<Vec<u64>> {
    let f = binary.function(name)?;
    let code = binary.read_vaddr(f.addr, usize::try_from(f.size).ok()?)?;
    let mut decoder = Decoder::with_ip(64, code, f.addr, DecoderOptions::NONE);
    let mut out = Vec::new();
    for instr in &mut decoder {
        if instr.mnemonic() == Mnemonic::Ret {
            out.push(instr.ip());
        }
    }
    Some(out)
}
