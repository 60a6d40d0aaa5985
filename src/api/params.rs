//! Parsing and validation of the query API's inputs: list query parameters and the search body. Every error is a
//! 400 problem naming the parameter; unknown parameters are rejected too (a typo must not silently widen a query).

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::problem::Problem;
use crate::store::list::Cursor;
use crate::store::search::AuditFilters;

pub const DEFAULT_LIST_LIMIT: i64 = 50;
pub const DEFAULT_SEARCH_LIMIT: i64 = 10;
pub const MAX_LIMIT: i64 = 1000;
pub const DEFAULT_HISTORY_LIMIT: i64 = 20;
pub const MAX_HISTORY_LIMIT: i64 = 100;
const MAX_QUERY_CHARS: usize = 4096;

const PHASES: [&str; 4] = ["Pending", "Processing", "Completed", "Failed"];
const OUTCOMES: [&str; 5] = ["Success", "Failure", "Pending", "Running", "Unknown"];

/// Filters as given by the caller (the namespace is kept apart: it is authorized before it becomes a filter).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    pub namespace: Option<String>,
    pub filters: AuditFilters,
}

impl Filters {
    /// Applies one filter parameter; `Ok(false)` when `key` is not a filter.
    fn apply(&mut self, key: &str, value: &str) -> Result<bool, Problem> {
        let f = &mut self.filters;
        let text = |max: usize| -> Result<String, Problem> {
            if value.is_empty() || value.len() > max {
                return Err(Problem::bad_parameter(
                    key,
                    format!("{key} must be 1 to {max} bytes long"),
                ));
            }
            Ok(value.to_string())
        };
        match key {
            "namespace" => {
                let ok = !value.is_empty()
                    && value.len() <= 63
                    && value
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
                if !ok {
                    return Err(Problem::bad_parameter(
                        key,
                        "namespace must be a Kubernetes namespace name (lowercase letters, digits and '-', at most 63)",
                    ));
                }
                self.namespace = Some(value.to_string());
            }
            "phase" => f.phase = Some(one_of(key, value, &PHASES)?),
            "outcome" => f.outcome = Some(one_of(key, value, &OUTCOMES)?),
            "severity" => f.severity = Some(text(50)?),
            "cluster" => f.cluster = Some(text(255)?),
            "actionType" => f.action_type = Some(text(100)?),
            "since" => f.since = Some(time(key, value)?),
            "until" => f.until = Some(time(key, value)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn check_range(&self) -> Result<(), Problem> {
        if let (Some(s), Some(u)) = (self.filters.since, self.filters.until)
            && s > u
        {
            return Err(Problem::bad_parameter(
                "until",
                "until must not be before since",
            ));
        }
        Ok(())
    }
}

fn one_of(key: &str, value: &str, allowed: &[&str]) -> Result<String, Problem> {
    if allowed.contains(&value) {
        Ok(value.to_string())
    } else {
        Err(Problem::bad_parameter(
            key,
            format!("{key} must be one of {}", allowed.join(", ")),
        ))
    }
}

fn time(key: &str, value: &str) -> Result<DateTime<Utc>, Problem> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            Problem::bad_parameter(
                key,
                format!("{key} must be an RFC 3339 time such as 2026-01-31T12:00:00Z"),
            )
        })
}

fn limit(key: &str, value: &str) -> Result<i64, Problem> {
    match value.parse::<i64>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(Problem::bad_parameter(
            key,
            format!("limit must be an integer from 1 to {MAX_LIMIT}"),
        )),
    }
}

/// `GET /api/v1/audits`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListRequest {
    pub filters: Filters,
    pub cursor: Option<Cursor>,
    pub limit: i64,
    /// `fields=details`: include each audit's `details` (omitted by default: up to 64 KiB each).
    pub details: bool,
}

/// The optional fields a list may ask for with `fields=` (comma-separated).
const LIST_FIELDS: [&str; 1] = ["details"];

pub fn parse_list(pairs: &[(String, String)]) -> Result<ListRequest, Problem> {
    let mut req = ListRequest {
        filters: Filters::default(),
        cursor: None,
        limit: DEFAULT_LIST_LIMIT,
        details: false,
    };
    let mut seen: Vec<&str> = Vec::new();
    for (key, value) in pairs {
        if seen.contains(&key.as_str()) {
            return Err(Problem::bad_parameter(
                key,
                format!("{key} is given more than once"),
            ));
        }
        seen.push(key);
        match key.as_str() {
            "limit" => req.limit = limit(key, value)?,
            "fields" => {
                for field in value.split(',').map(str::trim) {
                    if !LIST_FIELDS.contains(&field) {
                        return Err(Problem::bad_parameter(
                            key,
                            format!(
                                "fields lists optional fields to include, comma-separated; known: {}",
                                LIST_FIELDS.join(", ")
                            ),
                        ));
                    }
                    req.details = true;
                }
            }
            "cursor" => {
                req.cursor = Some(Cursor::decode(value).map_err(|e| {
                    Problem::bad_parameter(
                        "cursor",
                        format!("{e}; pass the nextCursor of a previous page unchanged"),
                    )
                })?)
            }
            _ => {
                if !req.filters.apply(key, value)? {
                    return Err(Problem::bad_parameter(
                        key,
                        format!(
                            "unknown parameter {key:?}; known: namespace, phase, outcome, severity, cluster, \
                             actionType, since, until, limit, cursor, fields"
                        ),
                    ));
                }
            }
        }
    }
    req.filters.check_range()?;
    Ok(req)
}

/// The query of `GET /api/v1/audits/{id}`: which page of the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryRequest {
    /// Generations after this one (the `historyNextCursor` of the previous page).
    pub after: Option<i64>,
    pub limit: i64,
}

pub fn parse_history(pairs: &[(String, String)]) -> Result<HistoryRequest, Problem> {
    let mut req = HistoryRequest {
        after: None,
        limit: DEFAULT_HISTORY_LIMIT,
    };
    let mut seen: Vec<&str> = Vec::new();
    for (key, value) in pairs {
        if seen.contains(&key.as_str()) {
            return Err(Problem::bad_parameter(
                key,
                format!("{key} is given more than once"),
            ));
        }
        seen.push(key);
        match key.as_str() {
            "historyLimit" => {
                req.limit = value
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (1..=MAX_HISTORY_LIMIT).contains(n))
                    .ok_or_else(|| {
                        Problem::bad_parameter(
                            key,
                            format!("historyLimit must be an integer from 1 to {MAX_HISTORY_LIMIT}"),
                        )
                    })?
            }
            "historyCursor" => {
                req.after = Some(value.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                    Problem::bad_parameter(
                        key,
                        "historyCursor must be the historyNextCursor of a previous answer, unchanged",
                    )
                })?)
            }
            _ => {
                return Err(Problem::bad_parameter(
                    key,
                    format!("unknown parameter {key:?}; known: historyLimit, historyCursor"),
                ));
            }
        }
    }
    Ok(req)
}

/// What a search is about.
#[derive(Debug, Clone, PartialEq)]
pub enum SearchQuery {
    Text(String),
    SimilarTo(i64),
}

/// `POST /api/v1/audits/search`.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest {
    pub query: SearchQuery,
    pub filters: Filters,
    pub limit: i64,
    pub min_similarity: Option<f64>,
}

pub fn parse_search(body: &[u8]) -> Result<SearchRequest, Problem> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Problem::bad_request(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(Problem::bad_request("the body must be a JSON object"));
    };
    let mut filters = Filters::default();
    let mut text = None;
    let mut similar = None;
    let mut lim = DEFAULT_SEARCH_LIMIT;
    let mut min_similarity = None;
    for (key, v) in &map {
        if v.is_null() {
            continue;
        }
        match key.as_str() {
            "query" => text = Some(query_text(key, v)?),
            "similarToId" => similar = Some(audit_id(key, v)?),
            "limit" => {
                lim = v
                    .as_i64()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        Problem::bad_parameter(
                            key,
                            format!("limit must be an integer from 1 to {MAX_LIMIT}"),
                        )
                    })?
            }
            "minSimilarity" => min_similarity = Some(similarity(key, v)?),
            _ => body_filter(&mut filters, key, v, unknown_field)?,
        }
    }
    filters.check_range()?;
    let query = match (text, similar) {
        (Some(t), None) => SearchQuery::Text(t),
        (None, Some(id)) => SearchQuery::SimilarTo(id),
        _ => {
            return Err(Problem::bad_parameter(
                "query",
                "give exactly one of query (free text) and similarToId (an audit id)",
            ));
        }
    };
    Ok(SearchRequest {
        query,
        filters,
        limit: lim,
        min_similarity,
    })
}

/// What an insight query's neighbours are.
#[derive(Debug, Clone, PartialEq)]
pub enum InsightQuery {
    Text(String),
    SimilarTo(i64),
    Alert {
        alert_name: String,
        target_kind: Option<String>,
    },
}

/// Neighbours an insight considers unless `limit` says otherwise.
pub const DEFAULT_INSIGHT_NEIGHBOURS: i64 = 200;
/// The default window of an insight: the last 180 days.
pub const DEFAULT_INSIGHT_WINDOW_DAYS: i64 = 180;
/// The longest window: the default retention (seven years); older audits are purged anyway.
pub const MAX_INSIGHT_WINDOW_DAYS: i64 = 2555;

/// `POST /api/v1/audits/insights`.
#[derive(Debug, Clone, PartialEq)]
pub struct InsightRequest {
    pub query: InsightQuery,
    /// The filters; `since` is always set (from `windowDays`, its default, or the caller's `since`).
    pub filters: Filters,
    /// Neighbours considered.
    pub limit: i64,
    pub min_similarity: Option<f64>,
}

/// Parses an insight body at time `now` (the window ends now unless `until` says otherwise). Errors are 400s
/// naming the field, as for search.
pub fn parse_insight(body: &[u8], now: DateTime<Utc>) -> Result<InsightRequest, Problem> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Problem::bad_request(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(Problem::bad_request("the body must be a JSON object"));
    };
    let mut filters = Filters::default();
    let (mut text, mut similar, mut alert, mut kind) = (None, None, None, None);
    let mut lim = DEFAULT_INSIGHT_NEIGHBOURS;
    let mut min_similarity = None;
    let mut window_days = None;
    for (key, v) in &map {
        if v.is_null() {
            continue;
        }
        match key.as_str() {
            "query" => text = Some(query_text(key, v)?),
            "similarToId" => similar = Some(audit_id(key, v)?),
            "alertName" => {
                alert = Some(
                    v.as_str()
                        .filter(|a| !a.is_empty() && a.len() <= 255)
                        .ok_or_else(|| {
                            Problem::bad_parameter(key, "alertName must be a string of 1 to 255 bytes")
                        })?
                        .to_string(),
                )
            }
            "targetKind" => {
                let ok = |k: &str| {
                    k.len() <= 63
                        && k.starts_with(|c: char| c.is_ascii_uppercase())
                        && k.chars().all(|c| c.is_ascii_alphanumeric())
                };
                kind = Some(v.as_str().filter(|k| ok(k)).ok_or_else(|| {
                    Problem::bad_parameter(
                        key,
                        "targetKind must be a Kubernetes kind such as Deployment (a letter A-Z, then letters and \
                         digits, at most 63)",
                    )
                })?.to_string())
            }
            "limit" => {
                lim = v
                    .as_i64()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        Problem::bad_parameter(
                            key,
                            format!("limit (the neighbours considered) must be an integer from 1 to {MAX_LIMIT}"),
                        )
                    })?
            }
            "minSimilarity" => min_similarity = Some(similarity(key, v)?),
            "windowDays" => {
                window_days = Some(
                    v.as_i64()
                        .filter(|n| (1..=MAX_INSIGHT_WINDOW_DAYS).contains(n))
                        .ok_or_else(|| {
                            Problem::bad_parameter(
                                key,
                                format!(
                                    "windowDays must be an integer from 1 to {MAX_INSIGHT_WINDOW_DAYS} (the default \
                                     retention)"
                                ),
                            )
                        })?,
                )
            }
            _ => body_filter(&mut filters, key, v, unknown_insight_field)?,
        }
    }
    filters.check_range()?;
    let query = match (text, similar, alert) {
        (Some(t), None, None) => InsightQuery::Text(t),
        (None, Some(id), None) => InsightQuery::SimilarTo(id),
        (None, None, Some(alert_name)) => InsightQuery::Alert {
            alert_name,
            target_kind: kind.take(),
        },
        _ => {
            return Err(Problem::bad_parameter(
                "query",
                "give exactly one of query (free text), similarToId (an audit id) and alertName (with an optional \
                 targetKind)",
            ));
        }
    };
    if kind.is_some() {
        return Err(Problem::bad_parameter(
            "targetKind",
            "targetKind narrows an alertName; give it with alertName",
        ));
    }
    if min_similarity.is_some() && matches!(query, InsightQuery::Alert { .. }) {
        return Err(Problem::bad_parameter(
            "minSimilarity",
            "minSimilarity applies to query and similarToId; alertName matches exactly",
        ));
    }
    let until = filters.filters.until.unwrap_or(now);
    match (filters.filters.since, window_days) {
        (Some(_), Some(_)) => {
            return Err(Problem::bad_parameter(
                "windowDays",
                "give one of since and windowDays",
            ));
        }
        (Some(since), None) => {
            if until - since > chrono::Duration::days(MAX_INSIGHT_WINDOW_DAYS) {
                return Err(Problem::bad_parameter(
                    "since",
                    format!(
                        "the window from since to until (or now) is longer than {MAX_INSIGHT_WINDOW_DAYS} days"
                    ),
                ));
            }
        }
        (None, days) => {
            filters.filters.since =
                Some(until - chrono::Duration::days(days.unwrap_or(DEFAULT_INSIGHT_WINDOW_DAYS)));
        }
    }
    Ok(InsightRequest {
        query,
        filters,
        limit: lim,
        min_similarity,
    })
}

fn audit_id(key: &str, v: &Value) -> Result<i64, Problem> {
    v.as_i64().filter(|n| *n >= 1).ok_or_else(|| {
        Problem::bad_parameter(
            key,
            format!("{key} must be a positive integer (an audit id)"),
        )
    })
}

fn similarity(key: &str, v: &Value) -> Result<f64, Problem> {
    v.as_f64()
        .filter(|n| (-1.0..=1.0).contains(n))
        .ok_or_else(|| Problem::bad_parameter(key, format!("{key} must be a number from -1 to 1")))
}

/// One filter field of a JSON body (a string), or the `unknown` problem for a field that is not a filter.
fn body_filter(
    filters: &mut Filters,
    key: &str,
    v: &Value,
    unknown: fn(&str) -> Problem,
) -> Result<(), Problem> {
    let Some(s) = v.as_str() else {
        return Err(if is_filter(key) {
            Problem::bad_parameter(key, format!("{key} must be a string"))
        } else {
            unknown(key)
        });
    };
    if filters.apply(key, s)? {
        Ok(())
    } else {
        Err(unknown(key))
    }
}

fn query_text(key: &str, v: &Value) -> Result<String, Problem> {
    v.as_str()
        .map(str::trim)
        .filter(|q| !q.is_empty() && q.len() <= MAX_QUERY_CHARS)
        .map(str::to_string)
        .ok_or_else(|| {
            Problem::bad_parameter(
                key,
                format!("query must be a non-empty string of at most {MAX_QUERY_CHARS} bytes"),
            )
        })
}

fn unknown_insight_field(key: &str) -> Problem {
    Problem::bad_parameter(
        key,
        format!(
            "unknown field {key:?}; known: query, similarToId, alertName, targetKind, limit, minSimilarity, \
             windowDays, namespace, phase, outcome, severity, cluster, actionType, since, until"
        ),
    )
}

fn is_filter(key: &str) -> bool {
    matches!(
        key,
        "namespace"
            | "phase"
            | "outcome"
            | "severity"
            | "cluster"
            | "actionType"
            | "since"
            | "until"
    )
}

fn unknown_field(key: &str) -> Problem {
    Problem::bad_parameter(
        key,
        format!(
            "unknown field {key:?}; known: query, similarToId, limit, minSimilarity, namespace, phase, outcome, \
             severity, cluster, actionType, since, until"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn param_of(r: Result<impl std::fmt::Debug, Problem>) -> String {
        match r {
            Err(p) => {
                assert_eq!(p.status, 400);
                p.parameter.unwrap_or_default()
            }
            Ok(v) => format!("accepted: {v:?}"),
        }
    }

    #[test]
    fn list_parameters_are_validated_and_named() {
        let ok = parse_list(&pairs(&[
            ("namespace", "payments"),
            ("phase", "Completed"),
            ("since", "2026-01-01T00:00:00Z"),
            ("limit", "10"),
        ]));
        let ok = ok.unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(ok.limit, 10);
        assert_eq!(ok.filters.namespace.as_deref(), Some("payments"));
        assert_eq!(ok.filters.filters.phase.as_deref(), Some("Completed"));
        assert_eq!(parse_list(&[]).map(|r| r.limit), Ok(DEFAULT_LIST_LIMIT));
        for (k, v, named) in [
            ("limit", "0", "limit"),
            ("limit", "1001", "limit"),
            ("limit", "ten", "limit"),
            ("cursor", "garbage!", "cursor"),
            ("phase", "completed", "phase"),
            ("since", "yesterday", "since"),
            ("namespace", "Bad_NS", "namespace"),
            ("nmespace", "a", "nmespace"),
            ("fields", "details,secrets", "fields"),
            ("fields", "", "fields"),
        ] {
            assert_eq!(param_of(parse_list(&pairs(&[(k, v)]))), named, "{k}={v}");
        }
        assert_eq!(
            param_of(parse_list(&pairs(&[
                ("since", "2026-02-01T00:00:00Z"),
                ("until", "2026-01-01T00:00:00Z")
            ]))),
            "until"
        );
        assert_eq!(
            param_of(parse_list(&pairs(&[("limit", "1"), ("limit", "2")]))),
            "limit"
        );
    }

    #[test]
    fn list_fields_and_history_pages_are_validated_and_named() {
        assert_eq!(parse_list(&[]).map(|r| r.details), Ok(false));
        assert_eq!(
            parse_list(&pairs(&[("fields", "details")])).map(|r| r.details),
            Ok(true)
        );
        assert_eq!(
            parse_history(&[]),
            Ok(HistoryRequest {
                after: None,
                limit: DEFAULT_HISTORY_LIMIT
            })
        );
        assert_eq!(
            parse_history(&pairs(&[("historyLimit", "5"), ("historyCursor", "7")])),
            Ok(HistoryRequest {
                after: Some(7),
                limit: 5
            })
        );
        for (k, v, named) in [
            ("historyLimit", "0", "historyLimit"),
            ("historyLimit", "101", "historyLimit"),
            ("historyCursor", "x", "historyCursor"),
            ("historyCursor", "-1", "historyCursor"),
            ("limit", "5", "limit"),
        ] {
            assert_eq!(param_of(parse_history(&pairs(&[(k, v)]))), named, "{k}={v}");
        }
    }

    #[test]
    fn search_body_is_validated_and_named() {
        let r = parse_search(
            br#"{"query":"pod OOM killed","namespace":"a","limit":5,"minSimilarity":0.2}"#,
        )
        .unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(r.query, SearchQuery::Text("pod OOM killed".into()));
        assert_eq!((r.limit, r.min_similarity), (5, Some(0.2)));
        let r = parse_search(br#"{"similarToId":7}"#).unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(r.query, SearchQuery::SimilarTo(7));
        for (body, named) in [
            (r#"{}"#, "query"),
            (r#"{"query":"a","similarToId":1}"#, "query"),
            (r#"{"query":""}"#, "query"),
            (r#"{"similarToId":0}"#, "similarToId"),
            (r#"{"query":"a","limit":0}"#, "limit"),
            (r#"{"query":"a","minSimilarity":2}"#, "minSimilarity"),
            (r#"{"query":"a","phase":3}"#, "phase"),
            (r#"{"query":"a","colour":"red"}"#, "colour"),
        ] {
            assert_eq!(param_of(parse_search(body.as_bytes())), named, "{body}");
        }
        assert_eq!(parse_search(b"[1]").map_err(|p| p.status), Err(400));
    }

    #[test]
    fn insight_body_is_validated_and_named() {
        let now = DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z")
            .unwrap_or_else(|e| panic!("{e}"))
            .with_timezone(&Utc);
        let parse = |body: &str| parse_insight(body.as_bytes(), now);
        let r = parse(r#"{"query":"pod OOM killed","namespace":"a"}"#)
            .unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(r.query, InsightQuery::Text("pod OOM killed".into()));
        assert_eq!(r.limit, DEFAULT_INSIGHT_NEIGHBOURS);
        assert_eq!(
            r.filters.filters.since,
            Some(now - chrono::Duration::days(180))
        );
        let r =
            parse(r#"{"alertName":"KubePodOOMKilled","targetKind":"Deployment","windowDays":7}"#)
                .unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(
            r.query,
            InsightQuery::Alert {
                alert_name: "KubePodOOMKilled".into(),
                target_kind: Some("Deployment".into())
            }
        );
        assert_eq!(
            r.filters.filters.since,
            Some(now - chrono::Duration::days(7))
        );
        let r = parse(r#"{"similarToId":3,"since":"2026-11-01T00:00:00Z","limit":1000}"#)
            .unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!((r.query, r.limit), (InsightQuery::SimilarTo(3), 1000));
        for (body, named) in [
            (r#"{}"#, "query"),
            (r#"{"query":"  "}"#, "query"),
            (r#"{"query":"a","alertName":"X"}"#, "query"),
            (r#"{"query":"a","targetKind":"Pod"}"#, "targetKind"),
            (r#"{"alertName":"X","targetKind":"pod"}"#, "targetKind"),
            (r#"{"alertName":"X","minSimilarity":0.5}"#, "minSimilarity"),
            (r#"{"similarToId":-1}"#, "similarToId"),
            (r#"{"query":"a","limit":0}"#, "limit"),
            (r#"{"query":"a","limit":1001}"#, "limit"),
            (r#"{"query":"a","windowDays":2556}"#, "windowDays"),
            (r#"{"query":"a","windowDays":0}"#, "windowDays"),
            (
                r#"{"query":"a","windowDays":5,"since":"2026-11-01T00:00:00Z"}"#,
                "windowDays",
            ),
            (r#"{"query":"a","since":"2000-01-01T00:00:00Z"}"#, "since"),
            (r#"{"query":"a","colour":"red"}"#, "colour"),
        ] {
            assert_eq!(param_of(parse(body)), named, "{body}");
        }
    }
}
