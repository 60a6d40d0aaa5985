//! The pure part of remediation insight: from the store's counts per action type (`crate::store::insights`) to
//! ranked rows and a one-line verdict. No I/O; table-tested below.

use super::types::{ActionInsight, SimilarityRange};
use crate::store::insights::ActionCounts;

/// z for a two-sided 95 % interval.
const Z: f64 = 1.959_964;

/// Fewer audits with an outcome than this are flagged `smallSample`.
pub const SMALL_SAMPLE: i64 = 10;

/// The lower bound of the Wilson score interval of `successes` in `trials` (`None` for no trials). Unlike the raw
/// rate it grows with the evidence: 1/1 → 0.21, 45/50 → 0.79.
pub fn wilson_lower_bound(successes: i64, trials: i64) -> Option<f64> {
    if trials <= 0 {
        return None;
    }
    let n = trials as f64;
    let p = (successes.clamp(0, trials) as f64) / n;
    let z2 = Z * Z;
    let centre = p + z2 / (2.0 * n);
    let margin = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(((centre - margin) / (1.0 + z2 / n)).max(0.0))
}

/// Rows ranked by lower bound (none last), then successes, then action name; and the neighbours' count and
/// similarity range.
pub fn rank(counts: Vec<ActionCounts>) -> (Vec<ActionInsight>, i64, Option<SimilarityRange>) {
    let neighbours = counts.iter().map(|c| c.attempts).sum();
    let similarity = counts
        .iter()
        .filter_map(|c| c.min_similarity.zip(c.max_similarity))
        .fold(None, |acc: Option<SimilarityRange>, (lo, hi)| {
            Some(match acc {
                None => SimilarityRange { min: lo, max: hi },
                Some(r) => SimilarityRange {
                    min: r.min.min(lo),
                    max: r.max.max(hi),
                },
            })
        });
    let mut rows: Vec<ActionInsight> = counts
        .into_iter()
        .map(|c| {
            let decided = c.succeeded + c.failed;
            ActionInsight {
                success_rate: (decided > 0).then(|| c.succeeded as f64 / decided as f64),
                lower_bound: wilson_lower_bound(c.succeeded, decided),
                small_sample: decided < SMALL_SAMPLE,
                action_type: c.action_type,
                attempts: c.attempts,
                completed: c.completed,
                succeeded: c.succeeded,
                failed: c.failed,
                median_duration_ms: c.median_duration_ms,
                p90_duration_ms: c.p90_duration_ms,
                last_seen: c.last_seen,
                clusters: c.clusters,
                namespaces: c.namespaces,
                examples: c.examples,
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        let lb = |r: &ActionInsight| r.lower_bound.unwrap_or(-1.0);
        lb(b)
            .total_cmp(&lb(a))
            .then(b.succeeded.cmp(&a.succeeded))
            .then_with(|| a.action_type.cmp(&b.action_type))
    });
    (rows, neighbours, similarity)
}

/// "restart-pod worked 45/50 times on 12 clusters; scale-deployment 3/9; …" (the first three rows), or why there
/// is nothing to say.
pub fn verdict(rows: &[ActionInsight], neighbours: i64) -> String {
    if neighbours == 0 {
        return "No similar audits in this window.".into();
    }
    let plural = |n: i64, one: &str, many: &str| {
        if n == 1 {
            format!("{n} {one}")
        } else {
            format!("{n} {many}")
        }
    };
    let decided: Vec<&ActionInsight> = rows.iter().filter(|r| r.succeeded + r.failed > 0).collect();
    let Some(first) = decided.first() else {
        return format!(
            "{}, none with an outcome yet.",
            plural(neighbours, "similar audit", "similar audits")
        );
    };
    let mut line = format!(
        "{} worked {}/{} times on {}",
        first.action_type,
        first.succeeded,
        first.succeeded + first.failed,
        plural(first.clusters, "cluster", "clusters")
    );
    if first.small_sample {
        line.push_str(" (small sample)");
    }
    for r in decided.iter().skip(1).take(2) {
        line.push_str(&format!(
            "; {} {}/{}",
            r.action_type,
            r.succeeded,
            r.succeeded + r.failed
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn counts(action: &str, succeeded: i64, failed: i64, sims: Option<(f64, f64)>) -> ActionCounts {
        ActionCounts {
            action_type: action.into(),
            attempts: succeeded + failed + 1,
            completed: succeeded + failed,
            succeeded,
            failed,
            median_duration_ms: Some(1000.0),
            p90_duration_ms: Some(2000.0),
            last_seen: Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap(),
            clusters: 2,
            namespaces: 1,
            examples: vec![1, 2, 3],
            min_similarity: sims.map(|s| s.0),
            max_similarity: sims.map(|s| s.1),
        }
    }

    #[test]
    fn the_lower_bound_grows_with_the_evidence() {
        assert_eq!(wilson_lower_bound(0, 0), None);
        for (s, n, lo, hi) in [
            (1, 1, 0.20, 0.21),
            (45, 50, 0.78, 0.79),
            (3, 9, 0.12, 0.13),
            (0, 5, 0.0, 0.0),
            (10, 10, 0.72, 0.73),
        ] {
            let lb = wilson_lower_bound(s, n).unwrap_or(f64::NAN);
            assert!((lo..=hi).contains(&lb), "{s}/{n}: {lb}");
        }
    }

    #[test]
    fn rows_rank_by_lower_bound_and_one_of_one_does_not_win() {
        let (rows, neighbours, sim) = rank(vec![
            counts("lucky-once", 1, 0, Some((0.7, 0.9))),
            counts("restart-pod", 45, 5, Some((0.6, 0.95))),
            counts("scale-deployment", 3, 6, Some((0.65, 0.8))),
            counts("still-running", 0, 0, Some((0.5, 0.6))),
        ]);
        let order: Vec<&str> = rows.iter().map(|r| r.action_type.as_str()).collect();
        assert_eq!(
            order,
            [
                "restart-pod",
                "lucky-once",
                "scale-deployment",
                "still-running"
            ]
        );
        assert_eq!(neighbours, 51 + 2 + 10 + 1);
        assert_eq!(
            sim,
            Some(SimilarityRange {
                min: 0.5,
                max: 0.95
            })
        );
        assert!(rows[1].small_sample && !rows[0].small_sample);
        assert_eq!(rows[3].success_rate, None);
        assert_eq!(
            verdict(&rows, neighbours),
            "restart-pod worked 45/50 times on 2 clusters; lucky-once 1/1; scale-deployment 3/9"
        );
    }

    #[test]
    fn the_verdict_says_when_there_is_nothing_to_say() {
        assert_eq!(verdict(&[], 0), "No similar audits in this window.");
        let (rows, n, sim) = rank(vec![counts("still-running", 0, 0, None)]);
        assert_eq!(sim, None);
        assert_eq!(
            verdict(&rows, n),
            "1 similar audit, none with an outcome yet."
        );
        let (rows, n, _) = rank(vec![counts("once", 1, 0, None)]);
        assert_eq!(
            verdict(&rows, n),
            "once worked 1/1 times on 2 clusters (small sample)"
        );
    }
}
