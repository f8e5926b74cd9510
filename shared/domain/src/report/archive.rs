//! Writes the report zip straight into a multipart upload: entries are streamed from the staged
//! sources in 64 KiB chunks and every full part is uploaded as soon as it is ready, so memory
//! stays at about one part whatever the report's size.
//!
//! Layout: `manifest.json`, `index.html`, and per source `sources/<name>/records.json`,
//! `sources/<name>/records.csv` and `sources/<name>/files/...` (S3 sources).

use super::cells::cell;
use super::html::{self, ReportHeader, HTML_PREVIEW_ROWS};
use super::ports::{ReportUpload, StagedSource};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use zip::write::SimpleFileOptions;
use zip::ZipWriter;

const CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("writing the report: {0}")]
pub struct ArchiveError(pub String);

fn archive_error(err: impl std::fmt::Display) -> ArchiveError {
    ArchiveError(err.to_string())
}

/// What the finished zip is.
#[derive(Debug, Clone)]
pub struct ArchiveSummary {
    pub size: u64,
    pub sha256: String,
    pub manifest: Value,
}

/// Bytes the zip writer has produced and not yet uploaded, plus a running hash of all of them.
#[derive(Default)]
struct Pending {
    buffer: Vec<u8>,
    hasher: Sha256,
    size: u64,
}

#[derive(Clone, Default)]
struct PartSink(Arc<Mutex<Pending>>);

impl Write for PartSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut pending = self.0.lock().unwrap_or_else(|p| p.into_inner());
        pending.buffer.extend_from_slice(buf);
        pending.hasher.update(buf);
        pending.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where the zip's bytes go: a multipart upload, one part at a time.
struct Uploader<'a, U> {
    upload: &'a mut U,
    sink: PartSink,
    part_size: usize,
}

impl<U: ReportUpload> Uploader<'_, U> {
    /// Uploads a part once enough bytes are pending (`all` uploads whatever is left).
    async fn drain(&mut self, all: bool) -> Result<(), ArchiveError> {
        let part = {
            let mut pending = self.sink.0.lock().unwrap_or_else(|p| p.into_inner());
            if pending.buffer.is_empty() || (!all && pending.buffer.len() < self.part_size) {
                return Ok(());
            }
            std::mem::take(&mut pending.buffer)
        };
        self.upload.write_part(part).await.map_err(archive_error)
    }
}

/// One entry being written: its bytes go to the zip and into its own hash.
struct Entry<'z> {
    zip: &'z mut ZipWriter<zip::write::StreamWriter<PartSink>>,
    hasher: Sha256,
    size: u64,
}

impl<'z> Entry<'z> {
    fn new(zip: &'z mut ZipWriter<zip::write::StreamWriter<PartSink>>) -> Self {
        Self {
            zip,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), ArchiveError> {
        self.zip.write_all(bytes).map_err(archive_error)?;
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn finish(self) -> (u64, String) {
        (self.size, hex::encode(self.hasher.finalize()))
    }
}

/// Writes the whole report into `upload` (which the caller completes or aborts).
pub async fn write_report<U: ReportUpload>(
    upload: &mut U,
    part_size: usize,
    header: &ReportHeader<'_>,
    sources: &[StagedSource],
) -> Result<ArchiveSummary, ArchiveError> {
    let sink = PartSink::default();
    // Zip64 records when an entry turns out over 4 GiB: sizes are unknown until written.
    let mut zip = ZipWriter::new_stream(sink.clone()).set_auto_large_file();
    let mut out = Uploader {
        upload,
        sink,
        part_size,
    };
    // Every entry is dated when the report was generated (zip stores local time; we store UTC).
    let modified = chrono::DateTime::parse_from_rfc3339(header.generated_at)
        .ok()
        .and_then(|t| {
            use chrono::{Datelike, Timelike};
            zip::DateTime::from_date_and_time(
                u16::try_from(t.year()).ok()?,
                u8::try_from(t.month()).ok()?,
                u8::try_from(t.day()).ok()?,
                u8::try_from(t.hour()).ok()?,
                u8::try_from(t.minute()).ok()?,
                u8::try_from(t.second()).ok()?,
            )
            .ok()
        })
        .unwrap_or_default();
    let options = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .last_modified_time(modified)
        .large_file(false);

    // File names come from other services' object keys: made safe before anything uses them.
    let sources: Vec<StagedSource> = sources
        .iter()
        .map(|source| {
            let mut source = source.clone();
            let mut seen = HashSet::new();
            for file in &mut source.files {
                file.name = unique_entry_name(&file.name, &mut seen);
            }
            source
        })
        .collect();
    let mut manifest_sources = Vec::new();
    let mut previews = Vec::new();
    for source in &sources {
        let mut files = Vec::new();
        let base = format!("sources/{}", source.name);

        // records.json: a JSON array, streamed line by line from the staged NDJSON.
        let path = format!("{base}/records.json");
        zip.start_file(&path, options).map_err(archive_error)?;
        let mut entry = Entry::new(&mut zip);
        entry.write(b"[")?;
        let mut preview = Vec::new();
        let mut columns = Columns::default();
        for (i, line) in records(source)?.enumerate() {
            let line = line?;
            entry.write(if i == 0 { b"\n" } else { b",\n" })?;
            entry.write(line.as_bytes())?;
            let record: Value = serde_json::from_str(&line).map_err(archive_error)?;
            columns.add(&record);
            if preview.len() < HTML_PREVIEW_ROWS {
                preview.push(record);
            }
            out.drain(false).await?;
        }
        entry.write(b"\n]\n")?;
        let (size, sha256) = entry.finish();
        files.push(json!({"path": path, "size": size, "sha256": sha256}));
        out.drain(false).await?;

        // records.csv: one column per top-level field; nested values as JSON.
        let path = format!("{base}/records.csv");
        zip.start_file(&path, options).map_err(archive_error)?;
        let mut entry = Entry::new(&mut zip);
        entry.write(&csv_row(columns.names.iter().map(String::as_str))?)?;
        for line in records(source)? {
            let record: Value = serde_json::from_str(&line?).map_err(archive_error)?;
            let cells: Vec<String> = columns.names.iter().map(|c| cell(&record, c)).collect();
            entry.write(&csv_row(cells.iter().map(String::as_str))?)?;
            out.drain(false).await?;
        }
        let (size, sha256) = entry.finish();
        files.push(json!({"path": path, "size": size, "sha256": sha256}));
        out.drain(false).await?;

        // Files from S3 sources, as they were.
        for file in &source.files {
            let path = format!("{base}/files/{}", file.name);
            zip.start_file(&path, options).map_err(archive_error)?;
            let mut entry = Entry::new(&mut zip);
            let mut input = std::fs::File::open(&file.path).map_err(archive_error)?;
            let mut chunk = vec![0u8; CHUNK];
            loop {
                let read = input.read(&mut chunk).map_err(archive_error)?;
                if read == 0 {
                    break;
                }
                entry.write(&chunk[..read])?;
                out.drain(false).await?;
            }
            let (size, sha256) = entry.finish();
            files.push(json!({"path": path, "size": size, "sha256": sha256}));
        }

        manifest_sources.push(json!({
            "name": source.name,
            "description": source.description,
            "record_count": source.record_count,
            "files": files,
            "not_applicable": source.not_applicable,
        }));
        previews.push((source, columns.names, preview));
    }

    let manifest = json!({
        "format": "gdpr-dsr-report/1",
        "request_id": header.request_id,
        "subject_hash": header.subject_hash,
        "generated_at": header.generated_at,
        "sources": manifest_sources,
    });
    zip.start_file("manifest.json", options)
        .map_err(archive_error)?;
    zip.write_all(&serde_json::to_vec_pretty(&manifest).map_err(archive_error)?)
        .map_err(archive_error)?;
    zip.start_file("index.html", options)
        .map_err(archive_error)?;
    zip.write_all(html::index(header, &manifest, &previews).as_bytes())
        .map_err(archive_error)?;
    zip.finish().map_err(archive_error)?;
    out.drain(true).await?;

    let pending = out.sink.0.lock().unwrap_or_else(|p| p.into_inner());
    Ok(ArchiveSummary {
        size: pending.size,
        sha256: hex::encode(pending.hasher.clone().finalize()),
        manifest,
    })
}

/// A file's name inside the zip: its path segments, split on `/` and `\\` alike (an unzip tool on
/// Windows splits on both), without empty, `.` and `..` segments, drive letters or control
/// characters; so no entry can be extracted outside the folder it is unpacked into.
pub fn entry_name(raw: &str) -> String {
    let segments: Vec<String> = raw
        .split(['/', '\\'])
        .filter(|s| !s.is_empty() && *s != "." && *s != "..")
        .map(|s| {
            s.chars()
                .map(|c| if c.is_control() || c == ':' { '_' } else { c })
                .collect::<String>()
        })
        .filter(|s| !s.trim_matches('.').is_empty())
        .collect();
    if segments.is_empty() {
        "unnamed".to_owned()
    } else {
        segments.join("/")
    }
}

/// [`entry_name`], made unique among `seen` (`a\\b` and `a/b` would otherwise collide).
fn unique_entry_name(raw: &str, seen: &mut HashSet<String>) -> String {
    let name = entry_name(raw);
    let mut candidate = name.clone();
    let mut n = 1;
    while !seen.insert(candidate.clone()) {
        n += 1;
        candidate = format!("{name}~{n}");
    }
    candidate
}

fn records(
    source: &StagedSource,
) -> Result<impl Iterator<Item = Result<String, ArchiveError>>, ArchiveError> {
    let file = std::fs::File::open(&source.records).map_err(archive_error)?;
    Ok(BufReader::new(file)
        .lines()
        .map(|line| line.map_err(archive_error)))
}

/// Column names in order of first appearance.
#[derive(Default)]
struct Columns {
    names: Vec<String>,
    seen: HashSet<String>,
}

impl Columns {
    fn add(&mut self, record: &Value) {
        match record {
            Value::Object(fields) => {
                for name in fields.keys() {
                    if self.seen.insert(name.clone()) {
                        self.names.push(name.clone());
                    }
                }
            }
            _ => {
                if self.seen.insert("value".into()) {
                    self.names.push("value".into());
                }
            }
        }
    }
}

fn csv_row<'a>(cells: impl Iterator<Item = &'a str>) -> Result<Vec<u8>, ArchiveError> {
    let mut writer = csv::Writer::from_writer(Vec::with_capacity(256));
    writer.write_record(cells).map_err(archive_error)?;
    writer.into_inner().map_err(archive_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_entry_climbs_out_of_its_folder_whatever_the_separator() {
        for (raw, safe) in [
            ("docs/cv.txt", "docs/cv.txt"),
            ("..\\..\\Windows\\evil.dll", "Windows/evil.dll"),
            ("../../etc/passwd", "etc/passwd"),
            ("/abs/./x", "abs/x"),
            ("C:\\boot.ini", "C_/boot.ini"),
            ("a\u{0}b", "a_b"),
            ("...", "unnamed"),
            ("", "unnamed"),
        ] {
            assert_eq!(entry_name(raw), safe, "{raw:?}");
        }
        let mut seen = HashSet::new();
        assert_eq!(unique_entry_name("a/b", &mut seen), "a/b");
        assert_eq!(unique_entry_name("a\\b", &mut seen), "a/b~2");
        assert_eq!(unique_entry_name("a\\b", &mut seen), "a/b~3");
    }
}
