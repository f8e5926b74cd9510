//! Calls to other services' and vendors' HTTP APIs, under one policy: redirects are never
//! followed (a redirect would carry the subject id and the auth header to a host the registry
//! did not name, and an erasure "confirmed" by whatever answers there), and every body is read
//! with a cap (a source answering 300 MB must fail, not take the function's memory).

use std::time::Duration;

/// The client every outbound call uses.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .build()
        // Only a broken TLS backend fails here, at init: nothing can be called without it.
        .expect("an HTTP client with the built-in TLS roots")
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
