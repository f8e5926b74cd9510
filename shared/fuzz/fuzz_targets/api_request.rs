//! The user API: any method, path, query, headers and body, from an authenticated user.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    method: u8,
    path: Path,
    query: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
    subject: String,
}

/// Mostly the real routes (with fuzzed ids), sometimes anything.
#[derive(Debug, Arbitrary)]
enum Path {
    List,
    One(String),
    Report(String),
    Anything(String),
}

fuzz_target!(|input: Input| {
    let method =
        ["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS"][usize::from(input.method) % 6];
    let path = match &input.path {
        Path::List => "/v1/requests".to_owned(),
        Path::One(id) => format!("/v1/requests/{id}"),
        Path::Report(id) => format!("/v1/requests/{id}/report"),
        // A request line's path always starts with `/`.
        Path::Anything(p) => format!("/{}", p.trim_start_matches('/')),
    };
    // API Gateway sets these itself (the API's own domain and https): a client's never arrive.
    let mut headers: Vec<(String, String)> = input
        .headers
        .iter()
        .filter(|(k, _)| !["host", "x-forwarded-proto"].contains(&k.to_ascii_lowercase().as_str()))
        .cloned()
        .collect();
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        headers.push(("content-type".into(), "application/json".into()));
    }
    dsr_fuzz::answer(dsr_fuzz::event(
        method,
        &path,
        &input.query,
        &headers,
        input.body.as_deref(),
        Some(serde_json::json!({ "sub": input.subject })),
    ));
});
