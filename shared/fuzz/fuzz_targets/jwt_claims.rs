//! The claims the authorizer hands over (API Gateway verified the token; the service reads its
//! claims): any JSON as the claims object, on every route.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&route, claims)) = data.split_first() else {
        return;
    };
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(claims) else {
        return;
    };
    let (method, path, body) = match route % 3 {
        0 => ("GET", "/v1/requests", None),
        1 => ("POST", "/v1/requests", Some(r#"{"type":"access"}"#)),
        _ => ("GET", "/v1/requests/01KB0000000000000000000000", None),
    };
    dsr_fuzz::answer(dsr_fuzz::event(
        method,
        path,
        "",
        &[("content-type".into(), "application/json".into())],
        body,
        Some(claims),
    ));
});
