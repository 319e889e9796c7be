//! Ring-buffer records from the BPF programs, decoded and applied to the model in sequence,
//! as `leaktrace -p` does: the input is read as consecutive 48-byte records (a short tail is
//! one of the wrong size).
#![no_main]

use leaktrace::collector;
use leaktrace::model::Model;
use leaktrace_common::{Record, RecordKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assert_eq!(
        collector::decode(data).is_some(),
        data.len() == size_of::<Record>()
    );
    let mut model = Model::default();
    // Parks and wakes of goroutines the model forgot when they exited.
    let (mut gone_parks, mut gone_wakes) = (0u64, 0u64);
    let (mut creates, mut exits) = (0u64, 0u64);
    for item in data.chunks(size_of::<Record>()) {
        let Some(record) = collector::decode(item) else {
            assert_ne!(item.len(), size_of::<Record>());
            continue;
        };
        // SAFETY: Record is repr(C) plain old data without implicit padding (its explicit
        // `_pad` fills it to 48 bytes), so every byte of it is initialised.
        let bytes = unsafe {
            std::slice::from_raw_parts((&record as *const Record).cast::<u8>(), size_of::<Record>())
        };
        assert_eq!(bytes, item, "decoding must keep every byte");
        match RecordKind::from_u8(record.kind) {
            Some(RecordKind::Create) => creates += 1,
            Some(RecordKind::Exit) => {
                exits += 1;
                if let Some(g) = model.goroutines.get(&record.goid) {
                    gone_parks += g.parks;
                    gone_wakes += g.wakes;
                }
            }
            _ => {}
        }
        model.apply(&record);
    }
    // Every park and wake is counted once, in its goroutine and in the tallies.
    let parks: u64 = model.goroutines.values().map(|g| g.parks).sum();
    let wakes: u64 = model.goroutines.values().map(|g| g.wakes).sum();
    assert_eq!(parks + gone_parks, model.total.total_parks());
    assert_eq!(wakes + gone_wakes, model.total.total_wakes());
    assert_eq!((model.created, model.exited), (creates, exits));
    assert_eq!(model.take_interval(), model.total);
});
