//! PostgreSQL and pgvector version parsing and comparison. Pure.

use std::cmp::Ordering;

/// A PostgreSQL server version: `18.6` → (18, 6); pre-releases like `17beta1` → (17, 0, pre-release).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgVersion {
    pub major: u32,
    pub minor: u32,
    /// `beta1`, `rc2`, … for pre-releases.
    pub pre_release: Option<String>,
}

impl PgVersion {
    /// Parses `server_version` (`18.6`, `16.4 (Debian 16.4-1)`, `17beta1`, `17rc1`, `9.6.24`).
    pub fn parse(s: &str) -> Option<Self> {
        let token = s.split_whitespace().next()?;
        let digits_end = token
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(token.len());
        let major: u32 = token[..digits_end].parse().ok()?;
        let rest = &token[digits_end..];
        if let Some(after_dot) = rest.strip_prefix('.') {
            let minor_end = after_dot
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after_dot.len());
            let minor: u32 = after_dot[..minor_end].parse().ok()?;
            Some(Self {
                major,
                minor,
                pre_release: None,
            })
        } else if rest.is_empty() {
            Some(Self {
                major,
                minor: 0,
                pre_release: None,
            })
        } else if rest.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) {
            Some(Self {
                major,
                minor: 0,
                pre_release: Some(rest.to_string()),
            })
        } else {
            None
        }
    }

    /// Whether this major version meets the minimum. A pre-release of the minimum major counts as supported
    /// (its major is what matters for the on-disk format and SQL features).
    pub fn meets_major(&self, min_major: u32) -> bool {
        self.major >= min_major
    }
}

/// A pgvector version, `0.8.6` → [0, 8, 6]; compared numerically (so `0.10.0` > `0.8.6`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtVersion(pub Vec<u32>);

impl ExtVersion {
    pub fn parse(s: &str) -> Option<Self> {
        let parts: Option<Vec<u32>> = s.trim().split('.').map(|p| p.parse().ok()).collect();
        parts.filter(|p| !p.is_empty() && p.len() <= 4).map(Self)
    }
}

impl PartialOrd for ExtVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ExtVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        let n = self.0.len().max(other.0.len());
        for i in 0..n {
            let a = self.0.get(i).copied().unwrap_or(0);
            let b = other.0.get(i).copied().unwrap_or(0);
            match a.cmp(&b) {
                Ordering::Equal => continue,
                o => return o,
            }
        }
        Ordering::Equal
    }
}

/// Checks both minimums; `Err` names what is missing, for the `VersionsSupported` condition.
pub fn check_versions(
    pg: &str,
    pgvector: Option<&str>,
    min_pg_major: i32,
    min_pgvector: &str,
) -> Result<(), String> {
    let pg_v =
        PgVersion::parse(pg).ok_or_else(|| format!("cannot parse PostgreSQL version {pg:?}"))?;
    let min_major = u32::try_from(min_pg_major).unwrap_or(0);
    let mut problems = Vec::new();
    if !pg_v.meets_major(min_major) {
        problems.push(format!(
            "PostgreSQL {pg} is older than the required major version {min_pg_major}"
        ));
    }
    let min_vec = ExtVersion::parse(min_pgvector)
        .ok_or_else(|| format!("cannot parse required pgvector version {min_pgvector:?}"))?;
    match pgvector {
        None => problems.push("the pgvector extension is not installed".to_string()),
        Some(v) => match ExtVersion::parse(v) {
            None => problems.push(format!("cannot parse pgvector version {v:?}")),
            Some(have) if have < min_vec => problems.push(format!(
                "pgvector {v} is older than the required {min_pgvector}"
            )),
            Some(_) => {}
        },
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_versions() {
        assert_eq!(
            PgVersion::parse("16.4"),
            Some(PgVersion {
                major: 16,
                minor: 4,
                pre_release: None
            })
        );
        assert_eq!(
            PgVersion::parse("18.6"),
            Some(PgVersion {
                major: 18,
                minor: 6,
                pre_release: None
            })
        );
        assert_eq!(
            PgVersion::parse("17beta1"),
            Some(PgVersion {
                major: 17,
                minor: 0,
                pre_release: Some("beta1".into())
            })
        );
        assert_eq!(
            PgVersion::parse("16.4 (Debian 16.4-1.pgdg120+1)").map(|v| v.minor),
            Some(4)
        );
        assert_eq!(PgVersion::parse("garbage"), None);
        assert!(PgVersion::parse("17beta1").unwrap().meets_major(16));
        assert!(!PgVersion::parse("15.8").unwrap().meets_major(16));
    }

    #[test]
    fn pgvector_versions_compare_numerically() {
        let v = |s| ExtVersion::parse(s).unwrap();
        assert!(v("0.8.6") > v("0.5.1"));
        assert!(v("0.10.0") > v("0.8.6"));
        assert!(v("0.5.1") == v("0.5.1"));
        assert!(v("0.5") < v("0.5.1"));
        assert_eq!(ExtVersion::parse("0.x"), None);
    }

    #[test]
    fn requirements() {
        assert_eq!(check_versions("18.6", Some("0.8.6"), 16, "0.5.1"), Ok(()));
        assert_eq!(
            check_versions("17beta1", Some("0.10.0"), 17, "0.8.6"),
            Ok(())
        );
        let err = check_versions("16.4", Some("0.5.1"), 17, "0.8.6").unwrap_err();
        assert!(
            err.contains("PostgreSQL 16.4") && err.contains("pgvector 0.5.1"),
            "{err}"
        );
        assert!(
            check_versions("18.6", None, 16, "0.5.1")
                .unwrap_err()
                .contains("not installed")
        );
    }
}
