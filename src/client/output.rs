//! What `kubectl audit` and `datastorage query` print: kubectl-like tables and text, JSON and YAML.
//!
//! Every string in an answer may come from a tenant (an `errorMessage`, a name, a target), so nothing reaches the
//! terminal raw: [`escape`] shows control characters (C0 including ESC, CR and newlines; DEL; C1, whose 0x9B is a
//! one-byte CSI on some terminals), bidirectional overrides and isolates, and invisible format characters as
//! `\u{…}`. Without it an `errorMessage` of `"\r\x1b[2K… hash chain verified"` rewrites the line it is printed
//! on, and U+202E reverses what follows. JSON output keeps its data but writes those characters as `\uXXXX`
//! escapes (still the same JSON value); YAML output is written from that escaped JSON.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::ser::{Formatter, PrettyFormatter};

use super::{Output, VerifyReport};
use crate::api::types::{Audit, GetResponse, InsightResponse, SearchHit};

/// Whether a character must not reach a terminal as it is: control characters and the invisible or
/// bidirectional formatting characters that identifiers may not hold either.
pub fn is_unsafe(c: char) -> bool {
    c.is_control() || crate::audit::validate::is_invisible_format(c)
}

/// `s` with every [`is_unsafe`] character written as `\u{hex}` (borrowed when there is none).
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if is_unsafe(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// serde_json's pretty printer, writing [`is_unsafe`] characters as `\uXXXX` (serde_json itself escapes only
/// U+0000–U+001F).
struct SafeJson(PrettyFormatter<'static>);

impl Formatter for SafeJson {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if is_unsafe(c) {
                w.write_all(&fragment.as_bytes()[start..i])?;
                // Every unsafe character is in the Basic Multilingual Plane: one \uXXXX.
                write!(w, "\\u{:04x}", c as u32)?;
                start = i + c.len_utf8();
            }
        }
        w.write_all(&fragment.as_bytes()[start..])
    }
    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_array(w)
    }
    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_array(w)
    }
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.0.begin_array_value(w, first)
    }
    fn end_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_array_value(w)
    }
    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_object(w)
    }
    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_object(w)
    }
    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.0.begin_object_key(w, first)
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_object_value(w)
    }
    fn end_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_object_value(w)
    }
}

/// Pretty JSON of `v` with unsafe characters escaped.
pub fn safe_json(v: &impl Serialize) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    let mut ser =
        serde_json::Serializer::with_formatter(&mut buf, SafeJson(PrettyFormatter::new()));
    v.serialize(&mut ser)?;
    Ok(String::from_utf8(buf)?)
}

/// `-o json` / `-o yaml`.
pub fn format(v: &impl Serialize, output: Output) -> anyhow::Result<String> {
    Ok(match output {
        Output::Yaml => {
            // Through the value: YAML emitters quote control characters but print bidi controls as they are, so
            // the strings are escaped first (YAML output is for reading; JSON keeps the exact data).
            let mut value = serde_json::to_value(v)?;
            escape_strings(&mut value);
            serde_saphyr::to_string(&value)?
        }
        Output::Json | Output::Table => format!("{}\n", safe_json(v)?),
    })
}

fn escape_strings(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => {
            if let Cow::Owned(e) = escape(s) {
                *s = e;
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(escape_strings),
        serde_json::Value::Object(map) => {
            let old = std::mem::take(map);
            for (k, mut item) in old {
                escape_strings(&mut item);
                map.insert(escape(&k).into_owned(), item);
            }
        }
        _ => {}
    }
}

fn opt(v: &Option<String>) -> String {
    v.as_deref()
        .map_or_else(|| "<none>".into(), |s| escape(s).into_owned())
}

/// Kubernetes-style age: 42s, 7m, 5h, 3d.
pub fn age(start: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - start).num_seconds().max(0);
    match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        7200..172_800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// Left-aligned columns separated by three spaces, like kubectl; every cell is [`escape`]d.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| escape(c).into_owned()).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                out.push_str(c);
            } else {
                let _ = write!(out, "{c:<w$}   ", w = widths[i]);
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in &rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

pub fn list_table(items: &[Audit], now: DateTime<Utc>) -> String {
    if items.is_empty() {
        return "No audits found.\n".into();
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            vec![
                i.id.to_string(),
                i.namespace.clone(),
                i.name.clone(),
                i.action_type.clone(),
                i.outcome.clone(),
                i.severity.clone(),
                age(i.start_time, now),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAMESPACE",
            "NAME",
            "ACTION",
            "OUTCOME",
            "SEVERITY",
            "AGE",
        ],
        &rows,
    )
}

pub fn search_table(hits: &[SearchHit], now: DateTime<Utc>) -> String {
    if hits.is_empty() {
        return "No audits found.\n".into();
    }
    let rows: Vec<Vec<String>> = hits
        .iter()
        .map(|i| {
            vec![
                i.id.to_string(),
                i.namespace.clone(),
                i.name.clone(),
                i.action_type.clone(),
                i.outcome.clone(),
                i.severity.clone(),
                format!("{:.3}", i.similarity),
                age(i.start_time, now),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAMESPACE",
            "NAME",
            "ACTION",
            "OUTCOME",
            "SEVERITY",
            "SIMILARITY",
            "AGE",
        ],
        &rows,
    )
}

/// The insight table (ACTION, TRIED, WORKED, RATE, LOWER-BOUND, MEDIAN, LAST-SEEN, EXAMPLES), then the
/// neighbours considered and the verdict.
pub fn insights_table(r: &InsightResponse, now: DateTime<Utc>) -> String {
    let mut out = if r.actions.is_empty() {
        String::new()
    } else {
        let rows: Vec<Vec<String>> = r
            .actions
            .iter()
            .map(|a| {
                vec![
                    a.action_type.clone(),
                    a.attempts.to_string(),
                    format!("{}/{}", a.succeeded, a.succeeded + a.failed),
                    a.success_rate
                        .map_or_else(|| "-".into(), |p| format!("{:.0}%", p * 100.0)),
                    a.lower_bound.map_or_else(
                        || "-".into(),
                        |p| format!("{p:.2}{}", if a.small_sample { "*" } else { "" }),
                    ),
                    a.median_duration_ms.map_or_else(|| "-".into(), duration_ms),
                    format!("{} ago", age(a.last_seen, now)),
                    a.examples
                        .iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                ]
            })
            .collect();
        table(
            &[
                "ACTION",
                "TRIED",
                "WORKED",
                "RATE",
                "LOWER-BOUND",
                "MEDIAN",
                "LAST-SEEN",
                "EXAMPLES",
            ],
            &rows,
        )
    };
    if !r.matched_alerts.is_empty() {
        let alerts: Vec<String> = r
            .matched_alerts
            .iter()
            .map(|m| {
                let name = m.alert_name.as_deref().unwrap_or("(no alert name)");
                match m.seeds {
                    Some(n) => format!(
                        "{name} ({n} of the {} nearest)",
                        crate::store::insights::SEEDS
                    ),
                    None => name.to_string(),
                }
            })
            .collect();
        out.push_str(&format!("\nincidents: {}", escape(&alerts.join(", "))));
    }
    let range = r.similarity.map_or_else(String::new, |s| {
        format!(", similarity {:.2}–{:.2}", s.min, s.max)
    });
    out.push_str(&format!(
        "\n{} similar audits since {}{range}{}\n{}\n",
        r.neighbours,
        r.since.format("%Y-%m-%d"),
        if r.actions.iter().any(|a| a.small_sample) {
            " (* fewer than 10 outcomes)"
        } else {
            ""
        },
        escape(&r.verdict)
    ));
    out
}

/// `850ms`, `42s`, `3m10s`, `2h5m`.
fn duration_ms(ms: f64) -> String {
    let ms = ms.max(0.0).round() as u64;
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{}s", ms / 1000),
        60_000..3_600_000 => format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000),
        _ => format!("{}h{}m", ms / 3_600_000, (ms % 3_600_000) / 60_000),
    }
}

pub fn get_text(d: &GetResponse, now: DateTime<Utc>) -> String {
    let a = &d.audit;
    let time = |t: &Option<DateTime<Utc>>| t.map_or_else(|| "<none>".into(), |t| t.to_rfc3339());
    let mut out = String::new();
    for (label, value) in [
        ("ID", a.id.to_string()),
        ("Namespace", escape(&a.namespace).into_owned()),
        ("Name", escape(&a.name).into_owned()),
        (
            "Remediation request",
            escape(&a.remediation_request_id).into_owned(),
        ),
        ("Alert", opt(&a.alert_name)),
        (
            "Alert fingerprint",
            escape(&a.alert_fingerprint).into_owned(),
        ),
        ("Action", escape(&a.action_type).into_owned()),
        ("Phase", escape(&a.phase).into_owned()),
        ("Outcome", escape(&a.outcome).into_owned()),
        ("Severity", escape(&a.severity).into_owned()),
        ("Environment", escape(&a.environment).into_owned()),
        ("Cluster", escape(&a.cluster_name).into_owned()),
        ("Target", escape(&a.target_resource).into_owned()),
        ("Start", a.start_time.to_rfc3339()),
        ("End", time(&a.end_time)),
        (
            "Duration (ms)",
            a.duration_ms
                .map_or_else(|| "<none>".into(), |d| d.to_string()),
        ),
        ("Error", opt(&a.error_message)),
        ("Generation", a.generation.to_string()),
        ("Deleted", time(&a.deleted_at)),
        ("Age", age(a.start_time, now)),
    ] {
        let _ = writeln!(out, "{:<21}{value}", format!("{label}:"));
    }
    if let Some(details) = a.details.as_ref().filter(|v| !v.is_null()) {
        let _ = writeln!(out, "{:<21}{}", "Details:", escape(&details.to_string()));
    }
    let report = VerifyReport {
        id: a.id,
        chain_verified: d.chain_verified,
        chain_head_matches: d.chain_head_matches,
        chain_checks: d.chain_checks.clone(),
        row_mismatches: d.row_mismatches.clone(),
        anchors: Some(d.anchors.clone()),
        problems: d.problems.clone(),
        namespace: a.namespace.clone(),
        name: a.name.clone(),
        hashes: d
            .history
            .iter()
            .map(|h| (h.generation, h.content_hash.clone(), h.chain_hash.clone()))
            .collect(),
        history_purged: d.history_purged.clone(),
    };
    out.push_str(&verify_text(&report));
    if d.history_next_cursor.is_some() {
        let _ = writeln!(
            out,
            "(history continues past generation {}: `verify {}` checks every generation)",
            d.history.last().map_or(0, |h| h.generation),
            a.id
        );
    }
    out
}

pub fn verify_text(r: &VerifyReport) -> String {
    if r.anchors.is_none() && r.chain_checks.is_empty() {
        // The API has no such audit (404): its reason is the verdict.
        return format!(
            "Audit {}: NOT VERIFIED: {}\n",
            r.id,
            escape(&r.problems.join("; "))
        );
    }
    let n = r.chain_checks.len();
    let mut out = format!(
        "Audit {} ({}/{}): hash chain {} ({n} generation{})\n",
        r.id,
        escape(&r.namespace),
        escape(&r.name),
        if r.chain_verified {
            "verified"
        } else {
            "NOT VERIFIED"
        },
        if n == 1 { "" } else { "s" }
    );
    if let (Some(p), Some(first)) = (&r.history_purged, r.chain_checks.first()) {
        out.push_str(&format!(
            "verified from generation {}; generations up to {} purged by retention on {}\n",
            first.generation,
            p.through_generation,
            p.purged_at.format("%Y-%m-%d")
        ));
    }
    let rows: Vec<Vec<String>> = r
        .chain_checks
        .iter()
        .map(|c| {
            let h = r.hashes.iter().find(|h| h.0 == c.generation);
            let short =
                |s: Option<&String>| s.map(|x| x.chars().take(16).collect()).unwrap_or_default();
            vec![
                c.generation.to_string(),
                short(h.map(|h| &h.1)),
                short(h.map(|h| &h.2)),
                if c.ok {
                    "ok".into()
                } else {
                    c.problem.clone().unwrap_or_else(|| "failed".into())
                },
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push_str(&table(
            &["GENERATION", "CONTENT-HASH", "CHAIN-HASH", "CHECK"],
            &rows,
        ));
    }
    // Every failure named: the chain, the current row, the resource's chainHash, the signed checkpoint.
    for p in &r.problems {
        let _ = writeln!(out, "FAILED: {}", escape(p));
    }
    if let Some(cp) = r.anchors.as_ref().and_then(|a| a.checkpoint.as_ref())
        && cp.verified
    {
        let _ = writeln!(
            out,
            "signed checkpoint of {}: {}",
            escape(&cp.at),
            if cp.covered == Some(true) {
                "proves this audit"
            } else {
                "does not cover this audit yet"
            }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn ages_and_tables_read_like_kubectl() {
        let now = t("2026-01-10T12:00:00Z");
        assert_eq!(age(t("2026-01-10T11:59:30Z"), now), "30s");
        assert_eq!(age(t("2026-01-10T11:00:00Z"), now), "60m");
        assert_eq!(age(t("2026-01-10T02:00:00Z"), now), "10h");
        assert_eq!(age(t("2026-01-01T12:00:00Z"), now), "9d");
        let tb = table(
            &["ID", "NAME"],
            &[
                vec!["1".into(), "a".into()],
                vec!["12345".into(), "b".into()],
            ],
        );
        assert_eq!(tb, "ID      NAME\n1       a\n12345   b\n");
    }

    #[test]
    fn verify_reports_broken_chains() {
        let r = VerifyReport {
            id: 1,
            chain_verified: false,
            chain_head_matches: true,
            chain_checks: vec![crate::api::types::ChainCheck {
                generation: 1,
                ok: false,
                problem: Some("record does not match content_hash".into()),
            }],
            row_mismatches: vec![],
            anchors: Some(Default::default()),
            problems: vec!["generation 1: record does not match content_hash".into()],
            namespace: "a".into(),
            name: "x".into(),
            hashes: vec![],
            history_purged: None,
        };
        let text = verify_text(&r);
        assert!(
            text.contains("NOT VERIFIED") && text.contains("record does not match"),
            "{text}"
        );
    }

    /// Every character a tenant could use to drive or fool a terminal, in every output form.
    const HOSTILE: &str = "boom\r\u{1b}[2K\u{1b}[32mhash chain verified\u{1b}[0m\nline2\u{7f}\u{9b}31m\u{202e}txt.exe\u{2066}\u{200b}\u{feff}";

    fn assert_inert(out: &str) {
        for c in out.chars() {
            assert!(
                c == '\n' || !is_unsafe(c),
                "U+{:04X} reached the output: {out:?}",
                c as u32
            );
        }
    }

    #[test]
    fn tenant_text_cannot_drive_the_terminal() {
        assert_eq!(escape("plain text, ünïcode ✓"), "plain text, ünïcode ✓");
        assert_eq!(escape("a\u{1b}[2Kb\r\n"), "a\\u{1b}[2Kb\\u{d}\\u{a}");
        let audit = Audit {
            id: 7,
            namespace: "ns".into(),
            name: format!("n{HOSTILE}"),
            remediation_request_id: HOSTILE.into(),
            alert_fingerprint: HOSTILE.into(),
            alert_name: Some(HOSTILE.into()),
            phase: "Failed".into(),
            outcome: "Failure".into(),
            action_type: "restart-pod".into(),
            severity: HOSTILE.into(),
            environment: HOSTILE.into(),
            cluster_name: HOSTILE.into(),
            target_resource: HOSTILE.into(),
            start_time: t("2026-01-10T11:59:30Z"),
            end_time: None,
            duration_ms: None,
            error_message: Some(HOSTILE.into()),
            details: Some(serde_json::Value::Object(
                [(HOSTILE.to_string(), serde_json::json!([HOSTILE]))]
                    .into_iter()
                    .collect(),
            )),
            generation: 1,
            content_hash: "c".repeat(64),
            chain_hash: "d".repeat(64),
            created_at: t("2026-01-10T11:59:30Z"),
            updated_at: t("2026-01-10T11:59:30Z"),
            deleted_at: None,
        };
        let now = t("2026-01-10T12:00:00Z");
        let get = GetResponse {
            audit: audit.clone(),
            history: vec![],
            history_next_cursor: None,
            chain_verified: false,
            chain_head_matches: false,
            chain_checks: vec![crate::api::types::ChainCheck {
                generation: 1,
                ok: false,
                problem: Some(HOSTILE.into()),
            }],
            row_mismatches: vec![HOSTILE.into()],
            anchors: Default::default(),
            problems: vec![HOSTILE.into()],
            history_purged: None,
        };
        let text = get_text(&get, now);
        assert_inert(&text);
        // The forged line is not a line of its own: the only "verified" line is the real verdict.
        assert!(
            !text.lines().any(|l| l.starts_with("hash chain verified")),
            "{text}"
        );
        assert!(text.contains("NOT VERIFIED"), "{text}");
        assert_inert(&list_table(std::slice::from_ref(&audit), now));
        for output in [Output::Json, Output::Yaml] {
            let out = format(&get, output).unwrap_or_default();
            assert_inert(&out);
            assert!(out.contains("verified"), "{out}");
        }
        // JSON output is still the same data.
        let json = format(&audit, Output::Json).unwrap_or_default();
        let back: Audit = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
        assert_eq!(back, audit);
    }
}
