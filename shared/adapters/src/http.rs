//! Calls to other services' and vendors' HTTP APIs, under one policy: redirects are never
//! followed (a redirect would carry the subject id and the auth header to a host the registry
//! did not name, and an erasure "confirmed" by whatever answers there), and every body is read
//! with a cap (a source answering 300 MB must fail, not take the function's memory).

use std::time::Duration;

/// The client every outbound call uses, made on the first call: it reads the system's trust
/// roots, which a function's init does not need (most invocations call no HTTP source).
#[derive(Debug, Clone, Default)]
pub struct Client(std::sync::Arc<std::sync::OnceLock<reqwest::Client>>);

impl Client {
    pub fn get(&self) -> &reqwest::Client {
        self.0.get_or_init(|| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(Duration::from_secs(5))
                .build()
                // Fails only with a trust store whose every certificate is unreadable; without
                // roots no call could be verified, so there is nothing to go on with.
                .expect("an HTTP client with the system's trust roots")
        })
    }
}

/// A body read up to a cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CappedBody {
    pub bytes: Vec<u8>,
    /// The body was longer than the cap; `bytes` holds its first `cap` bytes.
    pub truncated: bool,
}

/// Reads at most `cap` bytes of `response`, chunk by chunk; the rest is never read (the
/// connection is dropped). A declared `Content-Length` above the cap stops it before reading.
pub async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<CappedBody, reqwest::Error> {
    let mut bytes = Vec::new();
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Ok(CappedBody {
            bytes,
            truncated: true,
        });
    }
    while let Some(chunk) = response.chunk().await? {
        let room = cap - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            return Ok(CappedBody {
                bytes,
                truncated: true,
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(CappedBody {
        bytes,
        truncated: false,
    })
}

/// A size in words, for error texts.
pub fn describe_size(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}
