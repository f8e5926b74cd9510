//! `index.html`: the report for a person, readable in any browser without unpacking tools.

use super::cells::cell;
use super::ports::StagedSource;
use serde_json::Value;
use std::fmt::Write;

/// Records shown per source in `index.html`; the files hold all of them.
pub const HTML_PREVIEW_ROWS: usize = 100;

/// Who and when the report is for, as it appears in the manifest and the page.
pub struct ReportHeader<'a> {
    pub request_id: &'a str,
    pub subject_hash: &'a str,
    pub generated_at: &'a str,
}

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub fn index(
    header: &ReportHeader<'_>,
    manifest: &Value,
    previews: &[(&StagedSource, Vec<String>, Vec<Value>)],
) -> String {
    let mut html = String::new();
    let total: u64 = previews.iter().map(|(s, _, _)| s.record_count).sum();
    // `write!` into a String cannot fail.
    let _ = write!(
        html,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Your data</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
table {{ border-collapse: collapse; margin: .5rem 0 1.5rem; font-size: .9rem; }}
th, td {{ border: 1px solid #ccc; padding: .25rem .5rem; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
.note {{ color: #555; }}
</style></head><body>
<h1>Your data</h1>
<p>This is a copy of the personal data we hold about you, as you asked under Articles 15 and 20
of the GDPR. It was prepared on {generated} (UTC) for request <code>{request}</code>.</p>
<p>We found <strong>{total}</strong> records in <strong>{sources}</strong> places. Each section
below shows what one of our systems holds. The complete data of each is in the folder
<code>sources/&lt;name&gt;/</code> of this archive, as <code>records.json</code> (for computers and
for moving your data to another service) and <code>records.csv</code> (opens in any spreadsheet).
<code>manifest.json</code> lists every file with a checksum.</p>
"#,
        generated = escape(header.generated_at),
        request = escape(header.request_id),
        sources = previews.len(),
    );
    for (source, columns, rows) in previews {
        if let Some(reason) = &source.not_applicable {
            let _ = writeln!(
                html,
                "<h2>{}</h2>\n<p>{}</p>\n<p class=\"note\">Not applicable: this system {}.</p>",
                escape(source.name.as_str()),
                escape(&source.description),
                escape(reason)
            );
            continue;
        }
        let _ = write!(
            html,
            "<h2>{}</h2>\n<p>{}</p>\n<p class=\"note\">{} {}.",
            escape(source.name.as_str()),
            escape(&source.description),
            source.record_count,
            if source.record_count == 1 {
                "record"
            } else {
                "records"
            }
        );
        if source.record_count as usize > rows.len() {
            let _ = write!(
                html,
                " The first {HTML_PREVIEW_ROWS} are shown; all are in <code>sources/{}/records.csv</code>.",
                escape(source.name.as_str())
            );
        }
        html.push_str("</p>\n");
        if !rows.is_empty() {
            html.push_str("<table><thead><tr>");
            for column in columns {
                let _ = write!(html, "<th>{}</th>", escape(column));
            }
            html.push_str("</tr></thead><tbody>\n");
            for row in rows {
                html.push_str("<tr>");
                for column in columns {
                    let _ = write!(html, "<td>{}</td>", escape(&cell(row, column)));
                }
                html.push_str("</tr>\n");
            }
            html.push_str("</tbody></table>\n");
        }
        if !source.files.is_empty() {
            html.push_str("<p>Files:</p><ul>\n");
            for file in &source.files {
                let _ = writeln!(
                    html,
                    "<li><a href=\"sources/{0}/files/{1}\">{1}</a> ({2} bytes)</li>",
                    escape(source.name.as_str()),
                    escape(&file.name),
                    file.size
                );
            }
            html.push_str("</ul>\n");
        }
    }
    let _ = writeln!(
        html,
        "<p class=\"note\">Report format {}.</p></body></html>",
        escape(manifest["format"].as_str().unwrap_or_default())
    );
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_that_could_become_markup() {
        assert_eq!(
            escape(r#"<script>alert("x&y")</script>'"#),
            "&lt;script&gt;alert(&quot;x&amp;y&quot;)&lt;/script&gt;&#39;"
        );
    }
}
