//! Records as table cells, for `records.csv` and the preview in `index.html`.

use serde_json::Value;

/// The text of `record`'s `column`: nested values as JSON, text defused for spreadsheets.
pub fn cell(record: &Value, column: &str) -> String {
    let value = match record {
        Value::Object(fields) => fields.get(column),
        other if column == "value" => Some(other),
        _ => None,
    };
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => defuse_formula(s),
        Some(other) => other.to_string(),
    }
}

/// Text starting with `=`, `+`, `-`, `@`, tab or carriage return is a formula to a
/// spreadsheet: defuse it with a leading quote, since the person opening the file should see
/// their data, not run it (CSV injection). Numbers such as `-5` stay as they are; the JSON file
/// keeps every value exactly.
fn defuse_formula(text: &str) -> String {
    let risky = text.starts_with(['=', '+', '-', '@', '\t', '\r']) && text.parse::<f64>().is_err();
    if risky {
        format!("'{text}")
    } else {
        text.to_owned()
    }
}
