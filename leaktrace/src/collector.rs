//! Decoding the records the BPF programs send. The collector is thin on purpose: it turns
//! bytes into [`Record`]s and hands them to the model.

use leaktrace_common::Record;

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
