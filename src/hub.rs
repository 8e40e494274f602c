//! Weight files named either by a local path or by `hf://owner/repo/path/to/file@rev` on the
//! Hugging Face hub.
//!
//! A hub file is looked up in the local Hugging Face cache first, laid out as `huggingface_hub`
//! and the `hf-hub` crate write it (`models--owner--repo/refs/<branch>` holds a commit hash,
//! `models--owner--repo/snapshots/<commit>/<file>` is the file), so files fetched earlier by
//! `huggingface-cli download`, Python or kdet are found without the network. Only when the file
//! is not cached and `HF_HUB_OFFLINE` is not set is it downloaded, through `hf-hub`.
//!
//! The environment is read once into a [`HubEnv`], so tests and callers can pass their own
//! instead of mutating the process environment.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The scheme that marks a hub file.
pub const SCHEME: &str = "hf://";

/// `huggingface_hub`'s default revision.
pub const DEFAULT_REVISION: &str = "main";

/// `huggingface_hub`'s default endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Whether `spec` names a hub file (`hf://…`) rather than a local path.
pub fn is_hub(spec: &str) -> bool {
    spec.starts_with(SCHEME)
}

/// A weights spec written in a config is checked when the config loads, so a malformed
/// `hf://` path is reported there, located, rather than at first use; a local path is not
/// checked here (it may not exist yet).
pub fn validate_spec(spec: &str) -> std::result::Result<(), String> {
    if is_hub(spec) {
        HubFile::parse(spec).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A parsed `hf://owner/repo/path/to/file@rev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    /// `owner/repo`.
    pub repo: String,
    /// Path of the file inside the repo (`path/to/file`).
    pub file: String,
    /// Branch, tag or commit hash; [`DEFAULT_REVISION`] when the spec has no `@rev`.
    pub revision: String,
}

impl std::fmt::Display for HubFile {
    /// The canonical spec, revision always written, so messages name all three parts.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{SCHEME}{}/{}@{}", self.repo, self.file, self.revision)
    }
}

impl HubFile {
    /// Parse `hf://owner/repo/path/to/file[@rev]`. The revision follows the last `@`, so a
    /// revision such as `refs/pr/1` may contain `/`.
    pub fn parse(spec: &str) -> Result<HubFile> {
        let bad = |why: &str| {
            Error::msg(format!(
                "{spec}: {why}; expected {SCHEME}owner/repo/path/to/file[@revision]"
            ))
        };
        let rest = spec
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("not a hub path"))?;
        let (path, revision) = match rest.rsplit_once('@') {
            Some((_, "")) => return Err(bad("empty revision after `@`")),
            Some((p, r)) => (p, r),
            None => (rest, DEFAULT_REVISION),
        };
        let mut parts = path.splitn(3, '/');
        let owner = parts.next().unwrap_or("");
        let name = parts.next().unwrap_or("");
        let file = parts.next().unwrap_or("");
        if owner.is_empty() {
            return Err(bad("empty owner"));
        }
        if name.is_empty() {
            return Err(bad("empty repo name"));
        }
        if file.is_empty() {
            return Err(bad("names no file"));
        }
        // The file is joined onto a cache folder: empty, `.` and `..` segments would point
        // elsewhere (or outside the cache).
        if file
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(bad(&format!(
                "file path `{file}` has an empty, `.` or `..` segment"
            )));
        }
        // The revision names a file under `refs/` of the cache (`refs/pr/1` is one): the
        // same rule keeps it inside.
        if revision.starts_with('/')
            || revision
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(bad(&format!(
                "revision `{revision}` is an absolute path or has an empty, `.` or `..` segment"
            )));
        }
        Ok(HubFile {
            repo: format!("{owner}/{name}"),
            file: file.to_string(),
            revision: revision.to_string(),
        })
    }
}

/// What the hub lookup needs from the environment.
#[derive(Clone)]
pub struct HubEnv {
    /// The hub cache folder (holding `models--owner--repo/`).
    pub cache_dir: PathBuf,
    /// `HF_HUB_OFFLINE`: look only in the cache, never touch the network.
    pub offline: bool,
    /// `HF_ENDPOINT`: where downloads come from.
    pub endpoint: String,
    /// `HF_TOKEN`, else the token file `huggingface-cli login` writes (`$HF_HOME/token`).
    pub token: Option<String>,
}

impl std::fmt::Debug for HubEnv {
    // Written by hand so that a token never ends up in a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubEnv")
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish()
    }
}

impl HubEnv {
    /// Read the process environment (see [`HubEnv::from_vars`]).
    pub fn from_env() -> HubEnv {
        HubEnv::from_vars(|k| std::env::var(k).ok())
    }

    /// Build from a variable lookup, with `huggingface_hub`'s precedence (its `constants.py`):
    /// the cache is `HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    /// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`; `HF_HUB_OFFLINE` is
    /// on for `1`, `ON`, `YES` or `TRUE` (any case). (`hf_hub::Cache::from_env` reads only
    /// `HF_HOME`, which would miss files a user placed through `HF_HUB_CACHE`.)
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> HubEnv {
        let set = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let home = || {
            set("HOME")
                .or_else(|| set("USERPROFILE"))
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."))
        };
        let expand = |v: String| match v.strip_prefix("~/") {
            Some(rest) => home().join(rest),
            None if v == "~" => home(),
            None => PathBuf::from(v),
        };
        let hf_home = set("HF_HOME").map(expand).unwrap_or_else(|| {
            set("XDG_CACHE_HOME")
                .map(expand)
                .unwrap_or_else(|| home().join(".cache"))
                .join("huggingface")
        });
        let cache_dir = set("HF_HUB_CACHE")
            .map(expand)
            .unwrap_or_else(|| hf_home.join("hub"));
        let offline = set("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_uppercase().as_str(),
                "1" | "ON" | "YES" | "TRUE"
            )
        });
        let endpoint = set("HF_ENDPOINT")
            .map(|e| e.trim_end_matches('/').to_string())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let token = set("HF_TOKEN").or_else(|| {
            std::fs::read_to_string(hf_home.join("token"))
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        HubEnv {
            cache_dir,
            offline,
            endpoint,
            token,
        }
    }
}

/// A local file for `spec`: a local path is returned unchanged (relative paths are resolved by
/// the caller, against the config that named them); an `hf://` spec is found in the cache or
/// downloaded, as the process environment says.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    if !is_hub(spec) {
        return Ok(PathBuf::from(spec));
    }
    resolve_with(spec, &HubEnv::from_env())
}

/// [`resolve`] with an explicit environment.
pub fn resolve_with(spec: &str, env: &HubEnv) -> Result<PathBuf> {
    if !is_hub(spec) {
        return Ok(PathBuf::from(spec));
    }
    let hf = HubFile::parse(spec)?;
    let repo_dir = env.cache_dir.join(repo(&hf).folder_name());
    let why = match find_cached(&hf, &repo_dir) {
        Ok(p) => return Ok(p),
        Err(why) => why,
    };
    if env.offline {
        return Err(Error::msg(format!(
            "{hf}: not in the Hugging Face cache at {}: {why} (HF_HUB_OFFLINE is set, so nothing was downloaded)",
            repo_dir.display()
        )));
    }
    download(&hf, env).map_err(|e| {
        Error::msg(format!(
            "{hf}: not in the Hugging Face cache at {} ({why}), and downloading it from {} failed: {e}. \
             Without network access, fetch it elsewhere (`huggingface-cli download {} {} --revision {}`) \
             and copy the cache here, or give a local path; HF_HUB_OFFLINE=1 skips the download attempt",
            repo_dir.display(),
            env.endpoint,
            hf.repo,
            hf.file,
            hf.revision,
        ))
    })
}

fn repo(hf: &HubFile) -> hf_hub::Repo {
    hf_hub::Repo::with_revision(
        hf.repo.clone(),
        hf_hub::RepoType::Model,
        hf.revision.clone(),
    )
}

/// Whether `rev` is a full commit hash, which the cache keeps as a snapshot folder name
/// without any `refs/` entry.
fn is_commit_hash(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The cached file, or why it is not there. Mirrors `huggingface_hub.try_to_load_from_cache`:
/// `refs/<rev>` names the commit, else a commit hash is taken as is; the file is
/// `snapshots/<commit>/<file>` (a symlink into `blobs/`, which `exists` follows).
fn find_cached(hf: &HubFile, repo_dir: &Path) -> std::result::Result<PathBuf, String> {
    if !repo_dir.is_dir() {
        return Err(format!("no folder for repo {}", hf.repo));
    }
    let ref_path = repo_dir.join("refs").join(&hf.revision);
    let commit = match std::fs::read_to_string(&ref_path) {
        Ok(c) => c.trim().to_string(),
        Err(_) if is_commit_hash(&hf.revision) => hf.revision.clone(),
        Err(_) => {
            return Err(format!(
                "revision `{}` is not cached (no refs/{})",
                hf.revision, hf.revision
            ))
        }
    };
    let file = repo_dir.join("snapshots").join(&commit).join(&hf.file);
    if file.exists() {
        Ok(file)
    } else if !repo_dir.join("snapshots").join(&commit).is_dir() {
        Err(if commit == hf.revision {
            format!("commit {commit} has no snapshot")
        } else {
            format!(
                "revision `{}` (commit {commit}) has no snapshot",
                hf.revision
            )
        })
    } else {
        Err(format!(
            "file `{}` is not in snapshot {commit} of revision `{}`",
            hf.file, hf.revision
        ))
    }
}

/// Download into the cache through `hf-hub`, which writes the same layout [`find_cached`] reads.
fn download(hf: &HubFile, env: &HubEnv) -> std::result::Result<PathBuf, String> {
    use std::io::IsTerminal;
    let api = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(env.cache_dir.clone()))
        .with_endpoint(env.endpoint.clone())
        .with_token(env.token.clone())
        .with_progress(std::io::stderr().is_terminal())
        .build()
        .map_err(|e| e.to_string())?;
    api.repo(repo(hf))
        .download(&hf.file)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef01234567";
    const HASH2: &str = "fedcba9876543210fedcba9876543210fedcba98";

    /// A hub cache exactly as `hf-hub` writes it: the content in `blobs/<etag>`, a relative
    /// symlink to it from `snapshots/<commit>/<file>`, and `refs/<branch>` naming the commit.
    fn put(cache: &Path, repo: &str, commit: &str, file: &str, content: &str) -> PathBuf {
        let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
        let blobs = repo_dir.join("blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        let etag = format!("etag-{content}");
        std::fs::write(blobs.join(&etag), content).unwrap();
        let pointer = repo_dir.join("snapshots").join(commit).join(file);
        std::fs::create_dir_all(pointer.parent().unwrap()).unwrap();
        let depth = 2 + file.matches('/').count(); // snapshots/<commit>/<dirs…>
        let target = PathBuf::from("../".repeat(depth)).join("blobs").join(&etag);
        #[cfg(unix)]
        std::os::unix::fs::symlink(&target, &pointer).unwrap();
        #[cfg(not(unix))]
        std::fs::write(&pointer, content).unwrap();
        pointer
    }

    fn set_ref(cache: &Path, repo: &str, rev: &str, commit: &str) {
        let p = cache
            .join(format!("models--{}", repo.replace('/', "--")))
            .join("refs")
            .join(rev);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, commit).unwrap();
    }

    fn offline(cache: &Path) -> HubEnv {
        HubEnv {
            cache_dir: cache.to_path_buf(),
            offline: true,
            endpoint: DEFAULT_ENDPOINT.into(),
            token: None,
        }
    }

    #[test]
    fn parses_specs() {
        let p = HubFile::parse("hf://owner/repo/w.safetensors").unwrap();
        assert_eq!(
            (p.repo.as_str(), p.file.as_str(), p.revision.as_str()),
            ("owner/repo", "w.safetensors", "main")
        );
        let p = HubFile::parse("hf://o/r/a/b/c.pth@v1.0").unwrap();
        assert_eq!(
            (p.file.as_str(), p.revision.as_str()),
            ("a/b/c.pth", "v1.0")
        );
        let p = HubFile::parse("hf://o/r/f.pth@refs/pr/1").unwrap();
        assert_eq!(p.revision, "refs/pr/1");
        assert_eq!(p.to_string(), "hf://o/r/f.pth@refs/pr/1");
        for (spec, why) in [
            ("hf://owner/repo", "names no file"),
            ("hf://owner/repo/", "names no file"),
            ("hf:///repo/f", "empty owner"),
            ("hf://owner//f", "empty repo name"),
            ("hf://o/r/f@", "empty revision"),
            (
                "hf://o/r/f@../../etc",
                "revision `../../etc` is an absolute path or has",
            ),
            (
                "hf://o/r/f@/etc/passwd",
                "revision `/etc/passwd` is an absolute path",
            ),
            ("hf://o/r/f@refs//x", "has an empty, `.` or `..` segment"),
            ("hf://o/r/../../x", "`..` segment"),
            ("hf://o/r/a//b", "empty, `.` or `..` segment"),
        ] {
            let e = HubFile::parse(spec).unwrap_err().to_string();
            assert!(
                e.starts_with(spec) && e.contains(why) && e.contains("hf://owner/repo/path"),
                "{spec}: {e}"
            );
        }
    }

    #[test]
    fn local_paths_pass_through() {
        let env = offline(Path::new("/nonexistent"));
        assert_eq!(
            resolve_with("rel/w.pth", &env).unwrap(),
            PathBuf::from("rel/w.pth")
        );
        assert_eq!(
            resolve("/a/b.safetensors").unwrap(),
            PathBuf::from("/a/b.safetensors")
        );
    }

    #[test]
    fn resolves_from_cache_offline() {
        let d = tempfile::tempdir().unwrap();
        let c = d.path();
        put(c, "owner/repo", HASH, "model.safetensors", "main-weights");
        put(c, "owner/repo", HASH, "sub/dir/teacher.pth", "nested!");
        put(c, "owner/repo", HASH2, "model.safetensors", "v2-weights");
        set_ref(c, "owner/repo", "main", HASH);
        set_ref(c, "owner/repo", "v2", HASH2);
        let env = offline(c);
        let read = |spec: &str| std::fs::read_to_string(resolve_with(spec, &env).unwrap()).unwrap();
        // Default revision, explicit branch, commit hash (no ref needed), nested path.
        assert_eq!(read("hf://owner/repo/model.safetensors"), "main-weights");
        assert_eq!(
            read("hf://owner/repo/model.safetensors@main"),
            "main-weights"
        );
        assert_eq!(read("hf://owner/repo/model.safetensors@v2"), "v2-weights");
        assert_eq!(
            read(&format!("hf://owner/repo/model.safetensors@{HASH2}")),
            "v2-weights"
        );
        assert_eq!(read("hf://owner/repo/sub/dir/teacher.pth"), "nested!");
        // The path is the snapshot pointer, as hf-hub returns it.
        assert_eq!(
            resolve_with("hf://owner/repo/model.safetensors", &env).unwrap(),
            c.join(format!(
                "models--owner--repo/snapshots/{HASH}/model.safetensors"
            ))
        );
    }

    #[test]
    fn missing_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        let c = d.path();
        put(c, "owner/repo", HASH, "model.safetensors", "w");
        set_ref(c, "owner/repo", "main", HASH);
        let env = offline(c);
        let repo_dir = c.join("models--owner--repo").display().to_string();
        let err = |spec: &str| resolve_with(spec, &env).unwrap_err().to_string();

        let e = err("hf://owner/repo/other.pth");
        assert!(
            e.starts_with("hf://owner/repo/other.pth@main: not in the Hugging Face cache at "),
            "{e}"
        );
        assert!(
            e.contains(&repo_dir) && e.contains("file `other.pth` is not in snapshot"),
            "{e}"
        );
        assert!(
            e.contains("HF_HUB_OFFLINE is set, so nothing was downloaded"),
            "{e}"
        );

        let e = err("hf://owner/repo/model.safetensors@v9");
        assert!(
            e.starts_with("hf://owner/repo/model.safetensors@v9: "),
            "{e}"
        );
        assert!(
            e.contains(&repo_dir) && e.contains("revision `v9` is not cached"),
            "{e}"
        );

        let e = err(&format!("hf://owner/repo/model.safetensors@{HASH2}"));
        assert!(
            e.starts_with(&format!("hf://owner/repo/model.safetensors@{HASH2}: "))
                && e.contains(&format!("commit {HASH2} has no snapshot")),
            "{e}"
        );

        let e = err("hf://someone/else/w.pth@dev");
        assert!(e.starts_with("hf://someone/else/w.pth@dev: "), "{e}");
        assert!(
            e.contains(&c.join("models--someone--else").display().to_string())
                && e.contains("no folder for repo someone/else"),
            "{e}"
        );
    }

    #[test]
    fn failed_download_is_explained() {
        // Not offline, not cached: the download is attempted. An endpoint with an unknown URL
        // scheme makes it fail before any connection, so the test never touches the network.
        let d = tempfile::tempdir().unwrap();
        let env = HubEnv {
            endpoint: "nohttp://hub.invalid".into(),
            offline: false,
            ..offline(d.path())
        };
        let e = resolve_with("hf://owner/repo/w.safetensors@v1", &env)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("hf://owner/repo/w.safetensors@v1: not in the Hugging Face cache at "),
            "{e}"
        );
        assert!(
            e.contains("downloading it from nohttp://hub.invalid failed")
                && e.contains("huggingface-cli download owner/repo w.safetensors --revision v1")
                && e.contains("HF_HUB_OFFLINE=1"),
            "{e}"
        );
    }

    #[test]
    fn environment_precedence() {
        let env = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            HubEnv::from_vars(move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
        };
        let e = env(&[("HOME", "/h")]);
        assert_eq!(e.cache_dir, PathBuf::from("/h/.cache/huggingface/hub"));
        assert!(!e.offline && e.endpoint == DEFAULT_ENDPOINT);
        let e = env(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")]);
        assert_eq!(e.cache_dir, PathBuf::from("/x/huggingface/hub"));
        let e = env(&[
            ("HOME", "/h"),
            ("HF_HOME", "~/hf"),
            ("XDG_CACHE_HOME", "/x"),
        ]);
        assert_eq!(e.cache_dir, PathBuf::from("/h/hf/hub"));
        let e = env(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/cache")]);
        assert_eq!(e.cache_dir, PathBuf::from("/cache"));
        for (v, on) in [
            ("1", true),
            ("true", true),
            ("YES", true),
            ("on", true),
            ("0", false),
            ("no", false),
        ] {
            assert_eq!(env(&[("HF_HUB_OFFLINE", v)]).offline, on, "{v}");
        }
        let e = env(&[("HF_ENDPOINT", "http://mirror/"), ("HF_TOKEN", "secret")]);
        assert_eq!(e.endpoint, "http://mirror");
        assert_eq!(e.token.as_deref(), Some("secret"));
        assert!(!format!("{e:?}").contains("secret"));
    }
}
