//! The certificate of erasure as a page a person reads, saves and shows: the same signed
//! certificate as the JSON, laid out, with its JWS and the public key in the page. A small
//! script checks the signature in the browser (WebCrypto's Ed25519) and says whether the
//! document is as the service signed it; the key is to be compared with the one the service
//! publishes at `/v1/certificate-keys`.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use dsr_domain::erasure::certificate::SignedCertificate;
use dsr_domain::report::html::escape;
use sha2::{Digest, Sha256};
use std::fmt::Write;

/// Checks the JWS of `main[data-jws]` against `main[data-x]` and writes the verdict into
/// `#verification`; the page reads the same without it.
const SCRIPT: &str = r#"(async () => {
  const main = document.querySelector("main");
  const out = document.getElementById("verification");
  const bytes = (s) => Uint8Array.from(atob(s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4)), (c) => c.charCodeAt(0));
  try {
    const [header, payload, signature] = main.dataset.jws.split(".");
    const key = await crypto.subtle.importKey("raw", bytes(main.dataset.x), { name: "Ed25519" }, false, ["verify"]);
    const valid = await crypto.subtle.verify({ name: "Ed25519" }, key, bytes(signature), new TextEncoder().encode(header + "." + payload));
    const shown = JSON.parse(new TextDecoder().decode(bytes(payload)));
    const same = shown.request_id === main.dataset.request && shown.holders.length === document.querySelectorAll("tbody tr").length;
    out.className = valid && same ? "valid" : "invalid";
    out.textContent = valid && same
      ? "The signature verifies: this certificate is as the service signed it (key " + main.dataset.kid + ")."
      : "The signature does NOT verify: this document was changed after it was signed.";
  } catch (e) {
    out.className = "invalid";
    out.textContent = "The signature could not be checked here (" + e.message + "); check the JWS below with any JOSE library.";
  }
})();"#;

/// The page's policy: nothing from elsewhere, only this script (by its hash).
fn content_security_policy() -> String {
    format!(
        "default-src 'none'; script-src 'sha256-{}'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'",
        STANDARD.encode(Sha256::digest(SCRIPT.as_bytes()))
    )
}

/// The header to send with the page (the page also carries it, for a saved copy).
pub fn policy_header() -> String {
    content_security_policy()
}

/// A certificate's time as people read it (`2026-12-01 05:45:09 UTC`); the signed value is
/// in the JWS.
fn readable(at: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(at)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| escape(at))
}

/// The page for `signed`, whose public key (base64url) is `x`.
pub fn render(signed: &SignedCertificate, x: &str) -> String {
    let c = &signed.certificate;
    let mut rows = String::new();
    for h in &c.holders {
        let mut again = match h.found_again {
            0 => String::new(),
            n => format!(
                " <small>(found holding data {n} time(s) after answering; erased again)</small>"
            ),
        };
        if h.settled_by_hand {
            again.push_str(
                " <small>(answer obtained by our staff from the holder, with evidence on record)</small>",
            );
        }
        let _ = write!(
            rows,
            "<tr><td>{service}{last}{again}</td><td class=\"{outcome}\">{outcome_text}</td><td class=\"time\">{commanded}</td><td class=\"time\">{answered}</td><td class=\"digest\">{digest}</td></tr>",
            service = escape(&h.service),
            last = if h.erased_last {
                " <small>(last, after you were told)</small>"
            } else {
                ""
            },
            outcome = escape(&h.outcome),
            outcome_text = if h.outcome == "held_nothing" {
                "held nothing"
            } else {
                "erased"
            },
            commanded = h.commanded_at.as_deref().map_or("—".to_owned(), readable),
            answered = readable(&h.answered_at),
            digest = escape(&h.receipt_sha256),
        );
    }
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{policy}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Certificate of erasure {request}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 62rem; color: #1d232b; padding: 0 1rem; }}
h1 {{ font-size: 1.6rem; margin-bottom: .2rem; }}
.lead {{ font-size: 1.05rem; line-height: 1.5; }}
dl {{ display: grid; grid-template-columns: max-content auto; gap: .3rem 1rem; }}
dt {{ color: #5b6470; }}
table {{ border-collapse: collapse; width: 100%; margin: 1rem 0; font-size: .92rem; }}
th, td {{ border-bottom: 1px solid #d8dde3; padding: .45rem .5rem; text-align: left; vertical-align: top; }}
th {{ background: #f3f5f7; }}
td.time {{ white-space: nowrap; }}
.erased {{ color: #1a7f37; font-weight: 600; }}
.held_nothing {{ color: #57606a; font-weight: 600; }}
.digest, pre {{ font-family: ui-monospace, monospace; font-size: .78rem; word-break: break-all; white-space: pre-wrap; }}
#verification {{ padding: .7rem 1rem; border-radius: 6px; background: #f3f5f7; }}
#verification.valid {{ background: #dafbe1; color: #116329; }}
#verification.invalid {{ background: #ffebe9; color: #a40e26; }}
</style>
</head>
<body>
<main data-jws="{jws}" data-x="{x}" data-kid="{kid}" data-request="{request}">
<h1>Certificate of erasure</h1>
<p class="lead">The personal data of <strong>{subject}</strong> held by the services below was erased at
their request <code>{request}</code>: each service erased it or confirmed it held none, and answered
on the date shown.</p>
<dl>
<dt>Request received</dt><dd>{received}</dd>
<dt>Erasure completed</dt><dd>{completed}</dd>
<dt>Certificate issued</dt><dd>{issued}</dd>
<dt>Verified</dt><dd>{verified}</dd>
</dl>
<table>
<thead><tr><th>Service</th><th>Outcome</th><th>Commanded</th><th>Answered</th><th>SHA-256 of its receipt</th></tr></thead>
<tbody>{rows}</tbody>
</table>
<h2>Signature</h2>
<p id="verification">The signature is checked by this page's script; without it, check the JWS below.</p>
<p>Signed by the service with Ed25519 (key <code>{kid}</code>, public key <code>{x}</code>). Compare that key with
the one the service publishes at <code>/v1/certificate-keys</code>; any JOSE library checks the JWS, whose payload
is this certificate as JSON.</p>
<pre>{jws}</pre>
</main>
<script>{script}</script>
</body>
</html>
"#,
        policy = escape(&content_security_policy()),
        request = c.request_id,
        subject = escape(&c.subject),
        received = readable(&c.received_at),
        completed = readable(&c.completed_at),
        issued = readable(&c.issued_at),
        verified = match c.verification.verified_at.as_deref() {
            Some(at) => format!(
                "{} services read again on {}: none held anything",
                c.verification.holders_read,
                readable(at)
            ),
            None => "none of these services can be read back".to_owned(),
        },
        rows = rows,
        jws = escape(&signed.signature.jws),
        kid = escape(&signed.signature.kid),
        x = escape(x),
        script = SCRIPT,
    )
}

/// Whether the client asked for the page: a browser's `Accept` puts `text/html` first.
pub fn wants_html(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let first = accept.split(',').next().unwrap_or_default();
    first.trim().starts_with("text/html")
}

/// The public key of `signed`'s signer, as the page shows it.
pub fn public_key(signer: &dyn dsr_domain::erasure::certificate::CertificateSigner) -> String {
    URL_SAFE_NO_PAD.encode(signer.public_key())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_browser_gets_the_page_a_client_the_json() {
        assert!(wants_html(Some(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        )));
        assert!(!wants_html(Some("application/json")));
        assert!(!wants_html(Some("*/*")));
        assert!(!wants_html(None));
    }

    #[test]
    fn the_policy_allows_exactly_the_pages_script() {
        let policy = content_security_policy();
        let hash = STANDARD.encode(Sha256::digest(SCRIPT.as_bytes()));
        assert!(policy.contains(&format!("script-src 'sha256-{hash}'")));
        assert!(policy.starts_with("default-src 'none'"));
        assert!(!policy
            .split(';')
            .any(|d| d.trim().starts_with("script-src") && d.contains("unsafe")));
    }
}
