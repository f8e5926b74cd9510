//! The certificate of erasure over the wire: a completed erasure's certificate, signed by the
//! service, checked with an independent Ed25519 implementation (Python's `cryptography`, on
//! OpenSSL) against the key the API publishes; tampering breaks it; only its owner gets it.

use crate::contract::assert_response;
use crate::erasure::{completed, rig, RigSettings};
use crate::helpers::unique_name;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;
use std::time::Duration;

/// Checks a compact JWS with `cryptography`'s Ed25519, the public key given as its JWK `x`.
fn verified_by_openssl(jws: &str, x: &str) -> bool {
    let script = r#"
import base64, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.exceptions import InvalidSignature
def b64(s): return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
jws, x = sys.argv[1], sys.argv[2]
header, payload, signature = jws.split(".")
try:
    Ed25519PublicKey.from_public_bytes(b64(x)).verify(b64(signature), (header + "." + payload).encode())
    print("valid")
except InvalidSignature:
    print("invalid")
"#;
    let venv = std::env::var("DSR_VENV").unwrap_or_else(|_| {
        format!(
            "{}/.cache/gdpr-dsr/venv",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let out = std::process::Command::new(format!("{venv}/bin/python"))
        .args(["-c", script, jws, x])
        .output()
        .expect("the emulator's virtualenv has Python with `cryptography` (moto needs it)");
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        said == "valid" || said == "invalid",
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    said == "valid"
}

#[tokio::test]
async fn a_completed_erasure_has_a_certificate_signed_by_the_published_key_that_tampering_breaks() {
    let rig = rig(RigSettings::default()).await;
    let subject = format!("cert-{}", unique_name());
    let id = rig.submit_erasure(&subject).await;

    // Not before it is completed.
    let early = rig
        .app
        .get(&subject, &format!("/v1/requests/{id}/certificate"))
        .await;
    if early.status != 200 {
        assert_eq!(early.status, 409, "{}", early.body);
        assert_eq!(early.body["error"]["code"], "certificate_not_available");
        assert_response("GET", "/v1/requests/{id}/certificate", 409, &early.body);
    }
    let view = rig
        .wait_for(&subject, &id, Duration::from_secs(60), completed)
        .await;

    let reply = rig
        .app
        .get(&subject, &format!("/v1/requests/{id}/certificate"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_response("GET", "/v1/requests/{id}/certificate", 200, &reply.body);
    let certificate = &reply.body["certificate"];
    assert_eq!(certificate["request_id"], id.as_str());
    assert_eq!(certificate["subject"], subject.as_str());
    let holders = certificate["holders"].as_array().unwrap();
    assert_eq!(
        holders.len(),
        view["services"].as_array().unwrap().len(),
        "every holder: {certificate:#}"
    );
    for holder in holders {
        assert_eq!(holder["outcome"], "erased", "{holder}");
        assert_eq!(holder["receipt_sha256"].as_str().unwrap().len(), 64);
    }
    let email = holders.iter().find(|h| h["service"] == "email").unwrap();
    assert_eq!(email["erased_last"], true);

    // The published key, without a token.
    let keys: Value = rig
        .app
        .http
        .get(format!("{}/v1/certificate-keys", rig.app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_response("GET", "/v1/certificate-keys", 200, &keys);
    let key = &keys["keys"][0];
    assert_eq!(key["kid"], reply.body["signature"]["kid"]);
    let x = key["x"].as_str().unwrap();
    let jws = reply.body["signature"]["jws"].as_str().unwrap();
    assert!(verified_by_openssl(jws, x), "the signature verifies");

    // The JWS's payload is the certificate shown.
    let parts: Vec<&str> = jws.split('.').collect();
    let payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(&payload, certificate);

    // Tampering: a holder said to have held nothing, a byte of the signature.
    let mut forged = payload.clone();
    forged["holders"][0]["outcome"] = "held_nothing".into();
    let forged_jws = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap()),
        parts[2]
    );
    assert!(
        !verified_by_openssl(&forged_jws, x),
        "a changed certificate fails"
    );
    let mut signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    signature[0] ^= 1;
    let flipped = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        URL_SAFE_NO_PAD.encode(signature)
    );
    assert!(
        !verified_by_openssl(&flipped, x),
        "a changed signature fails"
    );

    // The readable page, as a browser asks for it; saved, it checks its own signature.
    let page = rig
        .app
        .http
        .get(format!("{}/v1/requests/{id}/certificate", rig.app.base))
        .bearer_auth(rig.app.token(&subject))
        .header("accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .starts_with("default-src 'none'"));
    let html = page.text().await.unwrap();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique_name());
    std::fs::create_dir_all(&dir).unwrap();
    let saved = dir.join("certificate.html");
    std::fs::write(&saved, &html).unwrap();
    let screenshot = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("certificate.png");
    let dom = crate::helpers::chromium(&format!("file://{}", saved.display()), &screenshot).await;
    assert!(
        dom.contains("The signature verifies"),
        "the page checked its signature: {dom}"
    );
    assert!(dom.contains(&subject) && dom.contains("Certificate of erasure"));
    assert_eq!(
        dom.matches("<tr><td>").count(),
        holders.len(),
        "a row per holder"
    );
    assert!(
        std::fs::metadata(&screenshot).unwrap().len() > 10_000,
        "a screenshot"
    );
    // A copy whose signed payload was changed (every holder said to have held nothing) says so.
    let page_jws = html
        .split(r#"data-jws=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page carries its JWS");
    let page_payload = page_jws.split('.').nth(1).unwrap();
    let decoded = String::from_utf8(URL_SAFE_NO_PAD.decode(page_payload).unwrap()).unwrap();
    let changed = decoded.replace(r#""outcome":"erased""#, r#""outcome":"held_nothing""#);
    assert_ne!(changed, decoded);
    let forged_page = html.replace(page_payload, &URL_SAFE_NO_PAD.encode(changed));
    let forged_file = dir.join("forged.html");
    std::fs::write(&forged_file, forged_page).unwrap();
    let dom = crate::helpers::chromium(
        &format!("file://{}", forged_file.display()),
        &dir.join("forged.png"),
    )
    .await;
    assert!(dom.contains("does NOT verify"), "{dom}");

    // Only its owner: anyone else's is not found.
    let other = rig
        .app
        .get(
            &format!("mallory-{}", unique_name()),
            &format!("/v1/requests/{id}/certificate"),
        )
        .await;
    assert_eq!(other.status, 404, "{}", other.body);
}

#[tokio::test]
async fn an_access_request_has_no_certificate_and_says_why() {
    let app = crate::helpers::spawn_app().await;
    let subject = format!("acc-{}", unique_name());
    let id = app.submit(&subject, "access").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let reply = app
        .get(&subject, &format!("/v1/requests/{id}/certificate"))
        .await;
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert_response("GET", "/v1/requests/{id}/certificate", 409, &reply.body);
    assert!(reply.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("erasure requests"));
}
