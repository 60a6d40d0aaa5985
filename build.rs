//! Sets `DATASTORAGE_GIT_COMMIT` for the crate (read by `datastorage_build_info` and `--version`):
//! 1. the `DATASTORAGE_GIT_COMMIT` environment variable when set and not empty: builds without a `.git` (the
//!    Dockerfile's builder stage, whose context excludes `.git`, passes it as a build argument), or a release
//!    pipeline pinning the value;
//! 2. otherwise `git rev-parse --short=10 HEAD` of the source tree;
//! 3. otherwise `unknown` (no git, not a repository).
//!
//! Also re-run when `migrations/` changes (see `main`). The build script is re-run when HEAD moves (a commit, a checkout), so the binary never reports a stale commit;
//! the price is that each commit recompiles this crate once.
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=DATASTORAGE_GIT_COMMIT");
    // `sqlx::migrate!` embeds migrations/ at compile time but does not tell cargo: a new migration file must
    // rebuild the crate (sqlx's documented remedy).
    println!("cargo:rerun-if-changed=migrations");
    let from_env = std::env::var("DATASTORAGE_GIT_COMMIT")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let commit = match from_env {
        Some(c) => c.trim().to_string(),
        None => {
            // HEAD, the branch it points to and packed-refs: whichever of them exists changes on a commit. (A path
            // that does not exist would make cargo re-run the script on every build, so only existing ones.)
            let mut watch = vec![git(&["rev-parse", "--git-path", "HEAD"])];
            if let Some(r) = git(&["rev-parse", "--symbolic-full-name", "HEAD"]) {
                watch.push(git(&["rev-parse", "--git-path", &r]));
            }
            watch.push(git(&["rev-parse", "--git-path", "packed-refs"]));
            for path in watch.into_iter().flatten() {
                if std::path::Path::new(&path).exists() {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
            git(&["rev-parse", "--short=10", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    println!("cargo:rustc-env=DATASTORAGE_GIT_COMMIT={commit}");
}
