//! `predict`'s output: readable text (the default), one JSON array, or CSV, one record per image.

use super::FileRecord;
use std::io::Write;

/// `--format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Each path, then its top-k classes with probabilities.
    #[default]
    Text,
    /// A JSON array of {path, class, probability, top_k: [{index, class, probability}]}.
    Json,
    /// A header, then path,class,probability,top_k with top_k as `class:probability` joined by `|`.
    Csv,
}

impl crate::util::Choice for Format {
    const CHOICES: &'static [crate::util::Named<Self>] = &[
        crate::util::Named { value: Format::Text, name: "text", aliases: &[], help: "Each path, then its top-k classes with probabilities" },
        crate::util::Named { value: Format::Json, name: "json", aliases: &[], help: "A JSON array of {path, class, probability, top_k: [{index, class, probability}]}" },
        crate::util::Named {
            value: Format::Csv,
            name: "csv",
            aliases: &[],
            help: "A header, then path,class,probability,top_k with top_k as `class:probability` joined by `|`",
        },
    ];
}

/// RFC 4180 quoting where needed.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn write_records(w: &mut dyn Write, records: &[FileRecord], format: Format) -> anyhow::Result<()> {
    match format {
        Format::Text => {
            for r in records {
                writeln!(w, "{}:", r.path)?;
                for p in &r.top_k {
                    writeln!(w, "  {:6.2}%  {:>4}  {}", p.probability * 100.0, p.index, p.class)?;
                }
            }
        }
        Format::Json => {
            serde_json::to_writer_pretty(&mut *w, records)?;
            writeln!(w)?;
        }
        Format::Csv => {
            writeln!(w, "path,class,probability,top_k")?;
            for r in records {
                let top: Vec<String> = r.top_k.iter().map(|p| format!("{}:{:.6}", p.class, p.probability)).collect();
                writeln!(w, "{},{},{:.6},{}", csv_field(&r.path), csv_field(&r.class), r.probability, csv_field(&top.join("|")))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::predict::Prediction;

    #[test]
    fn csv_quotes_and_json_round_trips() {
        let top = vec![
            Prediction { index: 1, class: "hot, dog".into(), probability: 0.75 },
            Prediction { index: 0, class: "other".into(), probability: 0.25 },
        ];
        let recs = vec![FileRecord { path: "a \"b\".jpg".into(), class: "hot, dog".into(), probability: 0.75, top_k: top }];
        let mut buf = Vec::new();
        write_records(&mut buf, &recs, Format::Csv).unwrap();
        let s = String::from_utf8(buf).unwrap();
        assert_eq!(s, "path,class,probability,top_k\n\"a \"\"b\"\".jpg\",\"hot, dog\",0.750000,\"hot, dog:0.750000|other:0.250000\"\n");
        let mut buf = Vec::new();
        write_records(&mut buf, &recs, Format::Json).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v[0]["top_k"][1]["class"], "other");
        assert_eq!(v[0]["probability"], 0.75);
    }
}
