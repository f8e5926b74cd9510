//! The page, rendered on the server: HTML and inline SVG, one small script in the shell (to
//! send the operator's token), no build step and nothing fetched from elsewhere.

use super::{Summary, Timeline, AGE_BUCKETS};
use dsr_domain::hops::Hop;
use dsr_domain::{RequestId, RequestKind};
use std::fmt::Write;

/// Only the page's own script and styles; no frames, nothing from other origins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// What a search by request id found.
pub enum Found {
    NotAsked,
    Invalid(String),
    Unknown(RequestId),
    Timeline(Box<Timeline>),
}

/// Escapes text for HTML content and attribute values (the report page's escaping).
pub use dsr_domain::report::html::escape;

const STYLE: &str = r#"
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2329;background:#f5f6f8}
header{background:#1d2329;color:#fff;padding:10px 20px;display:flex;gap:20px;align-items:center}
header h1{font-size:17px;margin:0;font-weight:600}
main{padding:16px 20px;display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:16px}
section{background:#fff;border-radius:6px;padding:12px 16px;box-shadow:0 1px 2px #0002;overflow-x:auto}
section.wide{grid-column:1/-1}
h2{font-size:15px;margin:0 0 8px}
table{border-collapse:collapse;width:100%}
th,td{text-align:right;padding:3px 8px;border-bottom:1px solid #e4e7eb;font-variant-numeric:tabular-nums;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
.ok{color:#176b2c}.bad{color:#b3261e;font-weight:600}
.banner{padding:4px 10px;border-radius:4px;font-weight:600}
.banner.ok{background:#d9f2df}.banner.bad{background:#fbe1df}
tr.mismatch td{background:#fbe1df}
.muted{color:#69737d}
code{font-size:12px}
#timeline td{text-align:left}
form{display:flex;gap:8px}
input[type=text]{flex:1;padding:4px 8px;font:inherit}
.legend span{display:inline-block;margin-right:12px}
.swatch{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
form.act{gap:4px}form.act input[type=text]{min-width:16em}
.act-said{margin:4px 0 0;white-space:normal;text-align:left}
"#;

/// The shell: no data. Its script fetches the page with the token the operator stored in this
/// tab (API Gateway wants it in a header), or without one (the local stack's loopback).
pub fn shell() -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>GDPR requests — operations</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>{STYLE}</style></head>
<body><div id="ops"><header><h1>GDPR data subject requests — operations</h1></header>
<main><section class="wide" id="login" hidden><h2>Operator token</h2>
<form id="token-form"><input type="text" id="token" placeholder="a bearer token with the dsr/operate scope" autocomplete="off"><button>Open</button></form>
<p class="muted">Kept in this tab only (sessionStorage).</p></section>
<section class="wide" id="loading">Loading…</section></main></div>
<script src="/ops/shell.js"></script></body></html>"#
    )
}

/// The shell's script, served from `/ops/shell.js` (the page allows only its own scripts).
pub const SHELL_SCRIPT: &str = r#"(function () {
  var stored = sessionStorage.getItem('dsr-operator-token');
  function load(token) {
    var headers = token ? { Authorization: 'Bearer ' + token } : {};
    fetch('/ops/page' + location.search, { headers: headers, cache: 'no-store' })
      .then(function (r) {
        if (r.status === 401 || r.status === 403) {
          document.getElementById('loading').hidden = true;
          document.getElementById('login').hidden = false;
          return null;
        }
        return r.text();
      })
      .then(function (html) {
        if (html !== null) { document.getElementById('ops').innerHTML = html; }
      });
  }
  document.getElementById('token-form').addEventListener('submit', function (e) {
    e.preventDefault();
    var token = document.getElementById('token').value.trim();
    sessionStorage.setItem('dsr-operator-token', token);
    load(token);
  });
  // What became of a decision, said under the form the operator used.
  function say(form, text, bad) {
    var said = form.parentNode.querySelector('.act-said');
    if (!said) {
      said = document.createElement('p');
      said.setAttribute('role', 'status');
      form.parentNode.appendChild(said);
    }
    said.textContent = text;
    said.className = 'act-said ' + (bad ? 'bad' : 'ok');
  }
  // An operator's decision on an obligation (the forms in a request's timeline): handed to
  // the confirm function, then the page is loaded again to show what it did.
  document.addEventListener('submit', function (e) {
    var form = e.target;
    if (!form.classList.contains('act')) { return; }
    e.preventDefault();
    var decision = e.submitter ? e.submitter.value : 'resend';
    var body = { request_id: form.dataset.request, service: form.dataset.service, decision: decision };
    if (decision === 'resolve') {
      body.outcome = form.elements.outcome.value;
      body.evidence = form.elements.evidence.value;
    }
    var token = sessionStorage.getItem('dsr-operator-token');
    var headers = { 'Content-Type': 'application/json' };
    if (token) { headers.Authorization = 'Bearer ' + token; }
    say(form, 'Asking the service to ' + decision + ' ' + body.service + '…', false);
    fetch('/ops/actions', { method: 'POST', headers: headers, body: JSON.stringify(body) })
      .then(function (r) {
        return r.json().then(function (answer) { return { ok: r.ok, answer: answer }; });
      })
      .then(function (r) {
        if (!r.ok) { say(form, r.answer.error.message, true); return; }
        say(form, decision + ' of ' + body.service + ' asked by ' + r.answer.operator +
          ' (' + r.answer.message_id + '); the timeline shows what the confirm function did.', false);
        setTimeout(function () { load(sessionStorage.getItem('dsr-operator-token')); }, 2000);
      }, function () { say(form, 'The service did not answer; nothing was done: try again.', true); });
  });
  load(stored);
})();
"#;

/// The page itself (what the shell puts in place).
pub fn page(summary: &Summary, found: &Found) -> String {
    let mut out = String::new();
    let sync = if summary.in_sync {
        r#"<span class="banner ok" id="sync">hops in sync</span>"#.to_owned()
    } else {
        format!(
            r#"<span class="banner bad" id="sync">{} hop(s) missing</span>"#,
            summary.missing.len()
        )
    };
    let _ = write!(
        out,
        r#"<header><h1>GDPR data subject requests — operations</h1>{sync}<span class="muted">{} · last {} h · {}</span></header><main>"#,
        escape(&summary.stack),
        summary.hours,
        summary.generated_at.format("%Y-%m-%d %H:%M:%S UTC"),
    );
    funnels(&mut out, summary);
    missing(&mut out, summary);
    open(&mut out, summary);
    dead_letters(&mut out, summary);
    stuck_and_escalated(&mut out, summary);
    latency(&mut out, summary);
    timeline(&mut out, found);
    out.push_str("</main>");
    out
}

fn funnels(out: &mut String, summary: &Summary) {
    for kind in &summary.kinds {
        let name = match kind.kind {
            RequestKind::Access => "Access requests",
            RequestKind::Erasure => "Erasure requests",
        };
        let _ = write!(
            out,
            r#"<section class="wide" id="funnel-{k}"><h2>{name}: submitted → received → done, per hour</h2>"#,
            k = kind.kind.as_str()
        );
        chart(out, kind);
        out.push_str(
            r#"<table><tr><th>hop</th><th>requests</th><th>in flight</th><th>missing</th></tr>"#,
        );
        for hop in &kind.funnel {
            let class = if hop.missing > 0 {
                r#" class="mismatch""#
            } else {
                ""
            };
            let _ = write!(
                out,
                r#"<tr{class} data-hop="{h}"><td>{h}</td><td class="count">{}</td><td>{}</td><td class="missing">{}</td></tr>"#,
                hop.count,
                hop.in_flight,
                hop.missing,
                h = hop.hop.as_str(),
            );
        }
        let clicks: Vec<String> = kind
            .clicks
            .iter()
            .map(|(outcome, n)| format!("{} {n}", outcome.replace('_', " ")))
            .collect();
        let _ = write!(
            out,
            r#"</table><p class="muted">Clicks on "submit": {}.</p></section>"#,
            escape(&clicks.join(", "))
        );
    }
}

/// Bars per hour: submitted, received, done side by side.
fn chart(out: &mut String, kind: &super::KindSummary) {
    const W: f64 = 900.0;
    const H: f64 = 160.0;
    const BASE: f64 = 140.0;
    let colours = [
        ("submitted", "#5b8def"),
        ("received", "#f0a030"),
        ("done", "#2e9d55"),
    ];
    let max = kind
        .series
        .iter()
        .map(|p| p.submitted.max(p.received).max(p.done))
        .max()
        .unwrap_or(0)
        .max(1);
    let slot = W / kind.series.len().max(1) as f64;
    let bar = (slot / 4.0).max(1.0);
    let _ = write!(
        out,
        r##"<svg viewBox="0 0 {W} {H}" width="100%" height="{H}" role="img" aria-label="{k} requests per hour"><line x1="0" y1="{BASE}" x2="{W}" y2="{BASE}" stroke="#c9ced4"/><text x="2" y="12" font-size="11" fill="#69737d">{max}</text>"##,
        k = kind.kind.as_str()
    );
    for (i, point) in kind.series.iter().enumerate() {
        let x = i as f64 * slot + bar / 2.0;
        for (j, value) in [point.submitted, point.received, point.done]
            .iter()
            .enumerate()
        {
            let h = (*value as f64 / max as f64) * (BASE - 16.0);
            let _ = write!(
                out,
                r#"<rect x="{:.1}" y="{:.1}" width="{bar:.1}" height="{h:.1}" fill="{}"><title>{} {}: {value}</title></rect>"#,
                x + j as f64 * bar,
                BASE - h,
                colours[j].1,
                point.hour.format("%H:00"),
                colours[j].0,
            );
        }
        if kind.series.len() <= 24 || i % 6 == 0 {
            let _ = write!(
                out,
                r##"<text x="{:.1}" y="{}" font-size="10" fill="#69737d">{}</text>"##,
                x,
                BASE + 14.0,
                point.hour.format("%H")
            );
        }
    }
    out.push_str("</svg><div class=\"legend\">");
    for (name, colour) in colours {
        let _ = write!(
            out,
            r#"<span><i class="swatch" style="background:{colour}"></i>{name}</span>"#
        );
    }
    out.push_str("</div>");
}

fn missing(out: &mut String, summary: &Summary) {
    out.push_str(r#"<section class="wide" id="missing"><h2>Hop mismatches</h2>"#);
    if summary.missing.is_empty() {
        out.push_str(
            r#"<p class="ok">Every request took every hop it should have by now.</p></section>"#,
        );
        return;
    }
    out.push_str(r#"<table><tr><th>request</th><th>type</th><th>missing hop</th><th>service</th><th>late since</th></tr>"#);
    for m in &summary.missing {
        let _ = write!(
            out,
            r#"<tr class="mismatch"><td><a href="?request={r}"><code>{r}</code></a></td><td>{}</td><td class="hop">{}</td><td>{}</td><td>{}</td></tr>"#,
            m.kind.as_str(),
            m.hop.as_str(),
            escape(m.service.as_deref().unwrap_or("")),
            m.late_since.format("%Y-%m-%d %H:%M:%S"),
            r = m.request,
        );
    }
    out.push_str("</table></section>");
}

fn open(out: &mut String, summary: &Summary) {
    out.push_str(
        r#"<section id="open"><h2>Open requests by state and age</h2><table><tr><th>state</th>"#,
    );
    for (label, _) in AGE_BUCKETS {
        let _ = write!(out, "<th>{}</th>", escape(label));
    }
    out.push_str("<th>total</th><th>at risk</th><th>missed</th></tr>");
    for row in &summary.open {
        let _ = write!(
            out,
            r#"<tr data-state="{s}"><td>{s}</td>"#,
            s = row.state.as_str()
        );
        for n in &row.by_age {
            let _ = write!(out, "<td>{n}</td>");
        }
        let risk = |n: usize| {
            if n > 0 {
                format!(r#"<td class="bad">{n}</td>"#)
            } else {
                "<td>0</td>".to_owned()
            }
        };
        let _ = write!(
            out,
            r#"<td class="total">{}</td>{}{}</tr>"#,
            row.total,
            risk(row.at_risk),
            risk(row.missed)
        );
    }
    out.push_str("</table></section>");
}

fn dead_letters(out: &mut String, summary: &Summary) {
    out.push_str(r#"<section id="dead-letters"><h2>Dead-letter queues</h2><table><tr><th>queue</th><th>messages</th></tr>"#);
    for dlq in &summary.dead_letters {
        let (class, depth) = match dlq.depth {
            Some(0) => ("", "0".to_owned()),
            Some(n) => (r#" class="mismatch""#, n.to_string()),
            None => (r#" class="mismatch""#, "unreadable".to_owned()),
        };
        let _ = write!(
            out,
            r#"<tr{class} data-queue="{q}"><td>{q}</td><td class="depth">{depth}</td></tr>"#,
            q = escape(&dlq.queue)
        );
    }
    out.push_str("</table></section>");
}

fn stuck_and_escalated(out: &mut String, summary: &Summary) {
    out.push_str(r#"<section id="stuck"><h2>Stuck requests</h2>"#);
    if summary.stuck.is_empty() {
        out.push_str(r#"<p class="ok">None.</p>"#);
    } else {
        out.push_str("<table><tr><th>request</th><th>state</th><th>idle</th></tr>");
        for s in &summary.stuck {
            let _ = write!(
                out,
                r#"<tr class="mismatch"><td><a href="?request={r}"><code>{r}</code></a></td><td>{}</td><td>{} min</td></tr>"#,
                s.state.as_str(),
                s.idle_minutes,
                r = s.request
            );
        }
        out.push_str("</table>");
    }
    out.push_str(r#"</section><section id="escalated"><h2>Escalated obligations</h2>"#);
    if summary.escalated.is_empty() {
        out.push_str(r#"<p class="ok">None.</p>"#);
    } else {
        out.push_str("<table><tr><th>request</th><th>service</th><th>since</th></tr>");
        for e in &summary.escalated {
            let _ = write!(
                out,
                r#"<tr class="mismatch"><td><a href="?request={r}"><code>{r}</code></a></td><td>{}</td><td>{}</td></tr>"#,
                escape(&e.service),
                e.at.format("%Y-%m-%d %H:%M"),
                r = e.request
            );
        }
        out.push_str("</table>");
    }
    out.push_str("</section>");
}

fn latency(out: &mut String, summary: &Summary) {
    out.push_str(r#"<section id="latency"><h2>Confirmation latency per service (command confirmed → answer)</h2>"#);
    if summary.latency.is_empty() {
        out.push_str(r#"<p class="muted">No answers in these hours.</p></section>"#);
        return;
    }
    let slowest = summary
        .latency
        .iter()
        .map(|l| l.p90_seconds)
        .fold(0.0_f64, f64::max)
        .max(0.001);
    out.push_str("<table><tr><th>service</th><th>answers</th><th>median</th><th>p90</th><th>max</th><th></th></tr>");
    for l in &summary.latency {
        let width = (l.p90_seconds / slowest * 120.0).max(1.0);
        let _ = write!(
            out,
            r##"<tr data-service="{s}"><td>{s}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><svg width="124" height="10"><rect width="{width:.0}" height="10" fill="#f0a030"/></svg></td></tr>"##,
            l.answers,
            seconds(l.median_seconds),
            seconds(l.p90_seconds),
            seconds(l.max_seconds),
            s = escape(&l.service),
        );
    }
    out.push_str("</table></section>");
}

fn seconds(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

fn timeline(out: &mut String, found: &Found) {
    out.push_str(r#"<section class="wide" id="timeline"><h2>A request's timeline</h2><form method="get" action="/ops"><input type="text" name="request" placeholder="request id (26 characters)" autocomplete="off"><button>Show</button></form>"#);
    match found {
        Found::NotAsked => {}
        Found::Invalid(raw) => {
            let _ = write!(
                out,
                r#"<p class="bad">`{}` is not a request id.</p>"#,
                escape(raw)
            );
        }
        Found::Unknown(id) => {
            let _ = write!(out, r#"<p class="bad">No request {id}.</p>"#);
        }
        Found::Timeline(t) => {
            let r = &t.request;
            let _ = write!(
                out,
                r#"<p><code id="timeline-request">{}</code> — {} · <b>{}</b> · received {} · due {}</p><table><tr><th>when</th><th>what</th><th>by</th></tr>"#,
                r.id,
                r.kind.as_str(),
                r.state.as_str(),
                r.received_at.format("%Y-%m-%d %H:%M:%S"),
                r.due_at.format("%Y-%m-%d"),
            );
            let mut rows: Vec<(chrono::DateTime<chrono::Utc>, String, String)> = t
                .hops
                .iter()
                .map(|m| {
                    let what = match (&m.click, &m.service) {
                        (Some(click), _) => format!("hop: submitted ({})", click.outcome.as_str()),
                        (None, Some(service)) => format!("hop: {} — {service}", m.hop),
                        (None, None) => format!("hop: {}", m.hop),
                    };
                    let times = if m.times > 1 {
                        format!(" ×{}", m.times)
                    } else {
                        String::new()
                    };
                    (
                        m.first_at,
                        format!("{what}{times}"),
                        hop_owner(m.hop).to_owned(),
                    )
                })
                .collect();
            rows.extend(
                t.audit
                    .iter()
                    .map(|e| (e.at, e.event.clone(), e.actor.clone())),
            );
            rows.sort_by_key(|(at, _, _)| *at);
            for (at, what, by) in rows {
                let class = if what.starts_with("hop:") {
                    r#" class="hop""#
                } else {
                    ""
                };
                let _ = write!(
                    out,
                    r#"<tr{class}><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                    at.format("%Y-%m-%d %H:%M:%S%.3f"),
                    escape(&what),
                    escape(&by)
                );
            }
            out.push_str("</table>");
            if !t.obligations.is_empty() {
                out.push_str("<table id=\"obligations\"><tr><th>service</th><th>status</th><th>sends</th><th>confirmed</th><th>act</th></tr>");
                let open = r.kind == RequestKind::Erasure && !r.state.is_terminal();
                for o in &t.obligations {
                    let _ = write!(
                        out,
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>",
                        escape(o.service.as_str()),
                        o.status.as_str(),
                        o.attempts,
                        o.confirmed_at
                            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                            .unwrap_or_else(|| "—".into())
                    );
                    let actionable = open
                        && !o.status.is_done()
                        && o.service.as_str() != dsr_domain::erasure::OWN_COPIES;
                    if actionable {
                        // One erased last is sent its command only after the notice.
                        let resend = !o.last || o.release_at.is_some();
                        decision_form(out, r.id, o.service.as_str(), resend);
                    } else {
                        out.push('—');
                    }
                    out.push_str("</td></tr>");
                }
                out.push_str("</table>");
            }
        }
    }
    out.push_str("</section>");
}

/// Send the command again, or record the holder's answer obtained by other means with its
/// evidence (the shell's script posts it to `/ops/actions`).
fn decision_form(out: &mut String, id: RequestId, service: &str, resend: bool) {
    let service = escape(service);
    let resend = if resend {
        r#"<button type="submit" name="decision" value="resend">Resend</button>"#
    } else {
        ""
    };
    let _ = write!(
        out,
        r#"<form class="act" data-request="{id}" data-service="{service}">{resend}<select name="outcome" aria-label="answer obtained"><option value="erased">erased</option><option value="not_found">not found</option></select><input type="text" name="evidence" aria-label="evidence" placeholder="evidence: a ticket, what was done"><button type="submit" name="decision" value="resolve">Resolve</button></form>"#
    );
}

/// Which function counts a hop.
fn hop_owner(hop: Hop) -> &'static str {
    match hop {
        Hop::Submitted | Hop::Cancelled => "intake",
        Hop::Received => "report / erasure",
        Hop::Generated | Hop::Failed => "report",
        Hop::FannedOut => "erasure",
        Hop::Commanded => "bridge (a vendor's API: erasure)",
        Hop::Notified | Hop::Announced => "bridge",
        Hop::Answered | Hop::Escalated | Hop::Released | Hop::Completed => "confirm",
    }
}
