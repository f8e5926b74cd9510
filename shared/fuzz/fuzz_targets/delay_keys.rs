//! Delay keys, from every caller: a key is taken within its bounds and scoped to its caller so
//! that no caller can reach another's (or the service's own) keys.
#![no_main]

use dsr_domain::delayed::{Caller, DelayKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (String, String, String)| {
    let (name, raw, other) = input;
    // Callers' names come from configuration, which allows no `/` in them.
    if name.is_empty() || name.contains('/') {
        return;
    }
    if let Ok(key) = DelayKey::parse(raw.clone()) {
        assert!(key.as_str().len() <= 200);
        let own = DelayKey::scoped(&Caller::Internal, &key);
        let theirs = DelayKey::scoped(&Caller::Service(name.clone()), &key);
        assert_ne!(
            own.as_str(),
            theirs.as_str(),
            "a caller's key is never the service's"
        );
        assert!(own.as_str().starts_with("dsr/"));
        assert!(theirs.as_str().starts_with(&format!("svc/{name}/")));
        // Another caller's key, whatever it is, never lands on this one's.
        if let Ok(other_key) = DelayKey::parse(other) {
            let elsewhere = DelayKey::scoped(&Caller::Service(format!("{name}x")), &other_key);
            assert_ne!(elsewhere.as_str(), theirs.as_str());
        }
    }
    let _ = DelayKey::stored(raw);
});
