//! The operations page in a real browser: Debian's Chromium, headless, loading the page the
//! local stack serves on its port, running its script, as an operator would. The numbers on it
//! must be the API's (`/ops/summary`) and the reconciliation's (`dsr-ops sync`), and a message
//! lost on purpose must show as a mismatch naming the request.

use crate::erasure::{rig, RigSettings};
use crate::helpers::chromium;
use dsr_local::event_source::Losses;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The part of `html` from the element with id `id` to the end of its section.
fn section<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!(r#"id="{id}""#))
        .unwrap_or_else(|| panic!("no #{id} on the page"));
    let rest = &html[start..];
    &rest[..rest.find("</section>").unwrap_or(rest.len())]
}

/// The number in the cell of class `cell` of the row marked `data-<key>="<value>"`.
fn cell(html: &str, key: &str, value: &str, cell: &str) -> String {
    let row = html
        .find(&format!(r#"data-{key}="{value}""#))
        .unwrap_or_else(|| panic!("no row {key}={value}"));
    let rest = &html[row..];
    let rest = &rest[..rest.find("</tr>").unwrap()];
    let at = rest
        .find(&format!(r#"class="{cell}">"#))
        .unwrap_or_else(|| panic!("no {cell} in row {key}={value}: {rest}"));
    let text = &rest[at + cell.len() + 9..];
    text[..text.find('<').unwrap()].to_owned()
}

#[tokio::test]
async fn the_operations_page_in_a_browser_shows_the_apis_numbers_and_a_lost_message() {
    let losses = Arc::new(Losses::default());
    let rig = rig(RigSettings {
        losses: Some(losses.clone()),
        overrides: vec![
            ("HOP_IN_FLIGHT_SECONDS", "10".into()),
            ("HOP_ANSWER_SECONDS", "30".into()),
        ],
        ..RigSettings::default()
    })
    .await;
    // One access request whose work message is lost; one of each kind that goes through.
    losses.lose("ReportFunction", &["access"]);
    let lost = rig.app.submit("page-lost", "access").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        crate::helpers::eventually(Duration::from_secs(60), async || !losses.lost().is_empty())
            .await
    );
    let access = rig.app.submit("page-alice", "access").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let erasure = rig.app.submit("page-bob", "erasure").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The page's own API, from loopback as the browser will call it.
    let http = reqwest::Client::new();
    let summary_url = format!("{}/ops/summary", rig.app.base);
    let mut summary = Value::Null;
    let settled = crate::helpers::eventually(Duration::from_secs(180), async || {
        summary = http
            .get(&summary_url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let done = |kind: usize, hop: &str| {
            summary["kinds"][kind]["funnel"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h["hop"] == hop)
                .map(|h| h["count"].as_u64().unwrap())
        };
        summary["missing"].as_array().unwrap().len() == 1
            && done(0, "announced") == Some(1)
            && done(1, "announced") == Some(1)
    })
    .await;
    assert!(
        settled,
        "the requests went through and the lost one is late: {summary:#}"
    );
    assert_eq!(summary["missing"][0]["request"], lost.as_str());
    assert_eq!(summary["missing"][0]["hop"], "received");

    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ops-page.png");
    let dom = chromium(&format!("{}/ops", rig.app.base), &screenshot).await;
    assert!(
        std::fs::metadata(&screenshot).unwrap().len() > 10_000,
        "a screenshot of the page"
    );

    // The mismatch: highlighted, naming the hop and the request.
    assert!(section(&dom, "sync").contains("1 hop(s) missing"), "{dom}");
    let missing = section(&dom, "missing");
    assert!(missing.contains(&lost), "{missing}");
    assert!(missing.contains(r#"<td class="hop">received</td>"#));
    assert!(!missing.contains(&access) && !missing.contains(&erasure));

    // Every count on the page is the API's.
    for (index, kind) in ["access", "erasure"].iter().enumerate() {
        let funnel = section(&dom, &format!("funnel-{kind}"));
        for hop in summary["kinds"][index]["funnel"].as_array().unwrap() {
            let name = hop["hop"].as_str().unwrap();
            assert_eq!(
                cell(funnel, "hop", name, "count"),
                hop["count"].to_string(),
                "{kind} {name}"
            );
            assert_eq!(
                cell(funnel, "hop", name, "missing"),
                hop["missing"].to_string(),
                "{kind} {name}"
            );
        }
    }
    let open = section(&dom, "open");
    for row in summary["open"].as_array().unwrap() {
        let state = row["state"].as_str().unwrap();
        assert_eq!(
            cell(open, "state", state, "total"),
            row["total"].to_string()
        );
    }
    let dead = section(&dom, "dead-letters");
    for queue in summary["dead_letters"].as_array().unwrap() {
        let name = queue["queue"].as_str().unwrap();
        assert_eq!(
            cell(dead, "queue", name, "depth"),
            queue["depth"].to_string()
        );
    }
    assert_eq!(summary["dead_letters"].as_array().unwrap().len(), 9);
    // Which service answers how fast: every holder of the erasure answered.
    let latency = section(&dom, "latency");
    for service in ["billing", "profile", "viewing-history", "email"] {
        assert!(
            latency.contains(&format!(r#"data-service="{service}""#)),
            "{latency}"
        );
    }

    // The reconciliation says the same.
    let ops = dsr_ops::Ops::connect(
        &crate::helpers::aws().await,
        &dsr_ops::Target {
            local_stack: Some(rig.app.stack.context.stack_name.clone()),
            ..Default::default()
        },
        &dsr_adapters::config::Env::from_pairs([("HOP_IN_FLIGHT_SECONDS", "10")]),
    )
    .await
    .unwrap();
    let out = crate::ops::Captured::default();
    let synced = ops
        .run(
            &dsr_ops::Command::Sync { hours: Some(2) },
            &mut out.clone(),
            &mut std::io::sink(),
        )
        .await;
    assert!(synced.is_err());
    let lines: Vec<String> = out
        .text()
        .lines()
        .filter(|l| l.starts_with("MISSING"))
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(&lost) && lines[0].contains("received"));

    // A request's timeline, found by id: each hop with its time.
    let timeline = chromium(
        &format!("{}/ops?request={erasure}", rig.app.base),
        &PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ops-timeline.png"),
    )
    .await;
    let timeline = section(&timeline, "timeline");
    assert!(timeline.contains(&erasure));
    for hop in [
        "hop: submitted (created)",
        "hop: received",
        "hop: commanded — billing",
        "hop: answered — email",
        "hop: completed",
        "hop: announced",
    ] {
        assert!(timeline.contains(hop), "{hop} in {timeline}");
    }
}

#[tokio::test]
async fn the_numbers_need_an_operator_when_the_caller_is_not_on_loopback() {
    // The gateway trusts loopback only; anyone else needs the scope. Tested on the handler the
    // gateway calls, with the scopes API Gateway would pass.
    let app = crate::helpers::spawn_app().await;
    let http = reqwest::Client::new();
    let shell = http.get(format!("{}/ops", app.base)).send().await.unwrap();
    assert_eq!(shell.status(), reqwest::StatusCode::OK);
    let csp = shell.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    let script = http
        .get(format!("{}/ops/shell.js", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), reqwest::StatusCode::OK);
    assert!(script.text().await.unwrap().contains("Authorization"));
    // A user's token does not open the numbers to a user, loopback or not, if it is invalid.
    let forged = http
        .get(format!("{}/ops/summary", app.base))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(
        forged.status(),
        reqwest::StatusCode::OK,
        "loopback is the local operator; a bad token does not take that away"
    );
}

/// An escalation is not a dead end on the page either. Two erasures whose billing holder
/// stayed silent until escalated; in Chromium, the operator opens each one's timeline and
/// clicks: "Resolve" with the answer obtained by other means and its evidence for one, and
/// "Resend" for the other once billing is back. Both complete; the timeline names the operator
/// and offers nothing more to do on billing.
#[tokio::test]
async fn an_operator_resolves_and_resends_escalated_obligations_by_clicking_on_the_page() {
    use crate::erasure::completed;
    use crate::helpers::Browser;
    use fantoccini::Locator;
    let (rig, billing, [(resolved, resolved_id), (resent, resent_id)]) =
        crate::ops::escalated_at_billing(["by-hand", "again"]).await;
    let browser = Browser::start().await;
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    // What the page says under the form the operator used.
    const SAID: &str = "#obligations .act-said";
    // Opens a request's timeline and waits for `shown` in it.
    let timeline = async |id: &str, shown: Locator<'_>| {
        browser
            .client
            .goto(&format!("{}/ops?request={id}", rig.app.base))
            .await
            .unwrap();
        browser.client.wait().for_element(shown).await.unwrap()
    };
    let billing_form =
        async |id: &str| timeline(id, Locator::Css(r#"form.act[data-service="billing"]"#)).await;
    let within = async |form: &fantoccini::elements::Element, css: &str| {
        form.find(Locator::Css(css)).await.unwrap()
    };

    // Billing's rows were deleted by hand: resolved on the page with the evidence.
    billing.forget(&resolved);
    let form = billing_form(&resolved_id).await;
    within(&form, "select[name=outcome]")
        .await
        .select_by_value("erased")
        .await
        .unwrap();
    within(&form, "input[name=evidence]")
        .await
        .send_keys("ticket SUP-4711: the rows were deleted by hand")
        .await
        .unwrap();
    within(&form, r#"button[value="resolve"]"#)
        .await
        .click()
        .await
        .unwrap();
    let said = browser.text_when(SAID, |t| t.contains("asked by")).await;
    assert!(
        said.starts_with("resolve of billing asked by operator@localhost"),
        "{said}"
    );
    rig.wait_for(&resolved, &resolved_id, Duration::from_secs(60), completed)
        .await;

    // A decision the service cannot carry out is refused on the page with the reason.
    let form = billing_form(&resent_id).await;
    within(&form, r#"button[value="resolve"]"#)
        .await
        .click()
        .await
        .unwrap();
    let refused = browser.text_when(SAID, |t| t.contains("evidence")).await;
    assert_eq!(refused, "a resolution needs its evidence");
    browser.scroll_to(SAID).await;
    assert!(
        browser
            .screenshot(&shots.join("ops-page-refused.png"))
            .await
            > 10_000,
        "a screenshot of the timeline with its forms and the refusal"
    );

    // Billing is back: the command is sent again from the page, and answered.
    billing
        .behaviour
        .silent
        .store(false, std::sync::atomic::Ordering::SeqCst);
    within(&form, r#"button[value="resend"]"#)
        .await
        .click()
        .await
        .unwrap();
    let said = browser.text_when(SAID, |t| t.contains("asked by")).await;
    assert!(said.starts_with("resend of billing asked by"), "{said}");
    let view = rig
        .wait_for(&resent, &resent_id, Duration::from_secs(60), completed)
        .await;
    assert_eq!(billing.records(&resent), 0, "{view:#}");

    // What the timeline shows after: who did what, and nothing left to do on billing.
    for (id, line) in [
        (
            &resolved_id,
            "operator_resolved:billing:confirmed:by:operator@localhost",
        ),
        (&resent_id, "operator_resent:billing:by:operator@localhost"),
    ] {
        timeline(id, Locator::Id("obligations")).await;
        let dom = browser.client.source().await.unwrap();
        assert!(dom.contains(line), "{id}: {line}");
        assert!(
            !dom.contains(r#"<form class="act""#),
            "{id}: the request is completed; nothing to act on"
        );
    }
    browser.scroll_to("#obligations").await;
    assert!(browser.screenshot(&shots.join("ops-page-after.png")).await > 10_000);
}
