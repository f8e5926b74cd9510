//! The service registry and the delayed-dispatch callers: operator-written YAML, read at every
//! cold start. Anything is either a usable registry or refused with what is wrong.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|yaml: &str| {
    if let Ok(registry) = serde_yaml_ng::from_str::<dsr_domain::registry::ServiceRegistry>(yaml) {
        match registry.validated() {
            Ok(registry) => {
                let _ = registry.erasable().count();
            }
            Err(reason) => assert!(!reason.to_string().is_empty()),
        }
    }
    if let Err(reason) = dsr_domain::delayed::DispatchPolicy::new(Some(yaml), "gdpr", Vec::new()) {
        assert!(!reason.to_string().is_empty());
    }
});
