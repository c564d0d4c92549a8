//! Credentials for a registry: `--creds`, else the auth files users keep
//! (podman's `auth.json`, docker's `config.json`), looked up by registry
//! host (and repository path, as podman allows). Values are never logged or
//! printed: errors and descriptions name only where they came from.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use super::http::one_line;
use super::reference::DEFAULT_REGISTRY;
use super::ClientOptions;
use crate::error::{Error, Result};

/// Largest auth file read.
const MAX_AUTH_FILE: u64 = 1 << 20;

/// A user name and password, and where they came from.
pub(crate) struct Credentials {
    user: String,
    password: String,
    /// `--creds`, or `credentials from FILE`.
    pub source: String,
}

impl fmt::Debug for Credentials {
    /// Only the source: values never reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The `Authorization` value for Basic auth.
    pub(crate) fn basic(&self) -> String {
        let pair = format!("{}:{}", self.user, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }
}

/// Where the auth files are: the process environment's, or a test's.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuthPaths {
    /// `--authfile`, else `REGISTRY_AUTH_FILE`: read instead of the others.
    pub explicit: Option<PathBuf>,
    /// `$XDG_RUNTIME_DIR`.
    pub xdg_runtime_dir: Option<PathBuf>,
    /// `$HOME`.
    pub home: Option<PathBuf>,
}

impl AuthPaths {
    /// The paths this process uses with `options`.
    pub fn from_env(options: &ClientOptions) -> Self {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        Self {
            explicit: options
                .auth_file
                .clone()
                .or_else(|| var("REGISTRY_AUTH_FILE").map(PathBuf::from)),
            xdg_runtime_dir: var("XDG_RUNTIME_DIR").map(PathBuf::from),
            home: var("HOME").map(PathBuf::from),
        }
    }

    /// The auth files to look in, in order.
    pub fn files(&self) -> Vec<PathBuf> {
        if let Some(file) = &self.explicit {
            return vec![file.clone()];
        }
        let mut files = Vec::new();
        if let Some(dir) = &self.xdg_runtime_dir {
            files.push(dir.join("containers/auth.json"));
        }
        if let Some(home) = &self.home {
            files.push(home.join(".config/containers/auth.json"));
            files.push(home.join(".docker/config.json"));
        }
        files
    }
}

/// An auth file: podman's `auth.json` and docker's `config.json` share
/// the `auths` map.
#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    /// Docker's credential store for every registry (not supported).
    #[serde(rename = "credsStore", default)]
    creds_store: Option<String>,
    /// Docker's credential helpers by registry (not supported).
    #[serde(rename = "credHelpers", default)]
    cred_helpers: HashMap<String, String>,
}

/// What an auth file has for a registry.
enum Found {
    Creds(Credentials),
    /// Only a credential helper, which this client does not run.
    Helper,
    Nothing,
}

/// One registry's entry.
#[derive(Deserialize)]
struct AuthEntry {
    /// base64 of `user:password`.
    #[serde(default)]
    auth: Option<String>,
}

/// The credentials for `registry`/`repository`: `--creds`, else the first
/// auth file with an entry for it. Also gives how the attempt is described
/// in errors when no credentials are found.
pub(crate) fn find_credentials(
    options: &ClientOptions,
    paths: &AuthPaths,
    registry: &str,
    repository: &str,
) -> Result<(Option<Credentials>, String)> {
    if let Some((user, password)) = &options.creds {
        let source = "--creds".to_string();
        let creds = Credentials {
            user: user.clone(),
            password: password.clone(),
            source: source.clone(),
        };
        return Ok((Some(creds), source));
    }
    let files = paths.files();
    let mut helpers = Vec::new();
    for file in &files {
        match lookup(file, registry, repository)? {
            Found::Creds(creds) => {
                let source = creds.source.clone();
                return Ok((Some(creds), source));
            }
            Found::Helper => helpers.push(file.display().to_string()),
            Found::Nothing => {}
        }
    }
    let looked: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let mut none = format!(
        "anonymously (no credentials for {registry} in {}",
        if looked.is_empty() {
            "any auth file (no HOME)".to_string()
        } else {
            looked.join(", ")
        }
    );
    if !helpers.is_empty() {
        none += &format!(
            "; credential helpers (named in {}) are not supported: use --creds",
            helpers.join(", ")
        );
    }
    none.push(')');
    Ok((None, none))
}

/// The keys an entry for `registry`/`repository` may have, most specific
/// first: `HOST/NS/REPO`, `HOST/NS`, `HOST` (docker.io also as docker's
/// `index.docker.io`).
fn candidate_keys(registry: &str, repository: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut path = format!("{registry}/{repository}");
    loop {
        keys.push(path.clone());
        match path.rfind('/') {
            Some(at) => path.truncate(at),
            None => break,
        }
    }
    if registry == DEFAULT_REGISTRY {
        keys.extend(["index.docker.io", "registry-1.docker.io"].map(String::from));
    }
    keys
}

/// An auth file key as a host and path: docker writes
/// `https://index.docker.io/v1/`, podman `HOST` or `HOST/NS/REPO`.
fn normalize_key(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let key = key.trim_end_matches('/');
    key.strip_suffix("/v1")
        .or_else(|| key.strip_suffix("/v2"))
        .unwrap_or(key)
}

/// The credentials auth file `file` has for `registry`/`repository`;
/// nothing when the file does not exist or has no entry.
fn lookup(file: &Path, registry: &str, repository: &str) -> Result<Found> {
    let Some(bytes) = read_bounded(file)? else {
        return Ok(Found::Nothing);
    };
    let bad = |why: &str| Error::Invalid(format!("{}: {why}", file.display()));
    let parsed: AuthFile = serde_json::from_slice(&bytes).map_err(|e| {
        bad(&format!(
            "not a valid auth file: {}",
            one_line(&e.to_string(), 120)
        ))
    })?;
    for key in candidate_keys(registry, repository) {
        let entry = parsed
            .auths
            .iter()
            .filter(|(k, _)| normalize_key(k) == key)
            .find_map(|(_, e)| e.auth.as_deref().filter(|a| !a.is_empty()));
        let Some(auth) = entry else { continue };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok());
        let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
            return Err(bad(&format!(
                "the entry for {key} is not base64 of user:password"
            )));
        };
        return Ok(Found::Creds(Credentials {
            user: user.to_string(),
            password: password.to_string(),
            source: format!("credentials from {}", file.display()),
        }));
    }
    let keys = candidate_keys(registry, repository);
    let helper = parsed.creds_store.is_some()
        || parsed
            .cred_helpers
            .keys()
            .any(|k| keys.iter().any(|key| normalize_key(k) == key));
    Ok(if helper {
        Found::Helper
    } else {
        Found::Nothing
    })
}

/// The contents of regular file `file`, at most [`MAX_AUTH_FILE`] bytes;
/// none if it does not exist. Opened non-blocking so a FIFO cannot hang us.
fn read_bounded(file: &Path) -> Result<Option<Vec<u8>>> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(file);
    let f = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(file, e)),
    };
    let meta = f.metadata().map_err(|e| Error::io(file, e))?;
    if !meta.is_file() {
        return Err(Error::Invalid(format!(
            "{}: an auth file must be a regular file",
            file.display()
        )));
    }
    let mut bytes = Vec::new();
    f.take(MAX_AUTH_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(file, e))?;
    if bytes.len() as u64 > MAX_AUTH_FILE {
        return Err(Error::Invalid(format!(
            "{}: an auth file larger than {MAX_AUTH_FILE} bytes",
            file.display()
        )));
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_auth(path: &Path, key: &str, user_pass: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode(user_pass);
        let json = format!(r#"{{"auths":{{"{key}":{{"auth":"{auth}"}}}}}}"#);
        std::fs::write(path, json).unwrap();
    }

    fn found(paths: &AuthPaths, registry: &str, repo: &str) -> Option<(String, String, String)> {
        let (creds, _) =
            find_credentials(&ClientOptions::default(), paths, registry, repo).unwrap();
        creds.map(|c| (c.user, c.password, c.source))
    }

    #[test]
    fn auth_files_in_order_and_key_forms() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let run = dir.path().join("run");
        let paths = AuthPaths {
            explicit: None,
            xdg_runtime_dir: Some(run.clone()),
            home: Some(home.clone()),
        };
        assert_eq!(found(&paths, "r.example:5000", "app"), None);
        let docker = home.join(".docker/config.json");
        write_auth(&docker, "https://r.example:5000/v1/", "d:pw:with:colons");
        let (user, pass, source) = found(&paths, "r.example:5000", "app").unwrap();
        assert_eq!((user.as_str(), pass.as_str()), ("d", "pw:with:colons"));
        assert_eq!(source, format!("credentials from {}", docker.display()));
        let config = home.join(".config/containers/auth.json");
        write_auth(&config, "r.example:5000/app", "c:1");
        assert_eq!(found(&paths, "r.example:5000", "app").unwrap().0, "c");
        assert_eq!(found(&paths, "r.example:5000", "other").unwrap().0, "d");
        write_auth(&run.join("containers/auth.json"), "r.example:5000", "x:2");
        assert_eq!(found(&paths, "r.example:5000", "app").unwrap().0, "x");
        let explicit = dir.path().join("explicit.json");
        let only = AuthPaths {
            explicit: Some(explicit.clone()),
            ..paths.clone()
        };
        assert_eq!(
            found(&only, "r.example:5000", "app"),
            None,
            "only the explicit file"
        );
        write_auth(&explicit, "index.docker.io", "hub:3");
        assert_eq!(
            found(&only, "docker.io", "library/debian").unwrap().0,
            "hub"
        );
    }

    #[test]
    fn creds_option_first_and_absence_described() {
        let dir = tempfile::tempdir().unwrap();
        let paths = AuthPaths {
            explicit: None,
            xdg_runtime_dir: None,
            home: Some(dir.path().to_path_buf()),
        };
        let options = ClientOptions {
            creds: Some(("u".into(), "p".into())),
            ..ClientOptions::default()
        };
        let (creds, tried) = find_credentials(&options, &paths, "h", "r").unwrap();
        assert_eq!(
            (creds.unwrap().source, tried.as_str()),
            ("--creds".into(), "--creds")
        );
        let (creds, tried) = find_credentials(&Default::default(), &paths, "h", "r").unwrap();
        assert!(creds.is_none());
        assert!(
            tried.starts_with("anonymously (no credentials for h in "),
            "{tried}"
        );
        assert!(tried.contains(".docker/config.json"), "{tried}");
    }

    #[test]
    fn credential_helpers_are_named_as_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        let paths = AuthPaths {
            explicit: Some(file.clone()),
            ..AuthPaths::default()
        };
        std::fs::write(&file, r#"{"auths":{},"credHelpers":{"other.example":"x"}}"#).unwrap();
        let (_, tried) = find_credentials(&Default::default(), &paths, "h", "r").unwrap();
        assert!(!tried.contains("helper"), "{tried}");
        std::fs::write(&file, r#"{"auths":{},"credHelpers":{"h":"ecr-login"}}"#).unwrap();
        let (creds, tried) = find_credentials(&Default::default(), &paths, "h", "r").unwrap();
        assert!(creds.is_none());
        let expected = format!(
            "credential helpers (named in {}) are not supported",
            file.display()
        );
        assert!(tried.contains(&expected), "{tried}");
        std::fs::write(&file, r#"{"credsStore":"desktop"}"#).unwrap();
        let (_, tried) = find_credentials(&Default::default(), &paths, "h", "r").unwrap();
        assert!(tried.contains("not supported: use --creds)"), "{tried}");
    }

    #[test]
    fn bad_auth_files_are_one_line_errors_without_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth.json");
        let paths = AuthPaths {
            explicit: Some(file.clone()),
            ..AuthPaths::default()
        };
        let err = |paths: &AuthPaths| {
            find_credentials(&Default::default(), paths, "h", "r")
                .unwrap_err()
                .to_string()
        };
        std::fs::write(&file, "{not json").unwrap();
        assert!(err(&paths).contains("not a valid auth file"));
        std::fs::write(&file, r#"{"auths":{"h":{"auth":"c2VjcmV0"}}}"#).unwrap(); // "secret"
        let e = err(&paths);
        assert!(
            e.contains("not base64 of user:password") && !e.contains("secret"),
            "{e}"
        );
        std::fs::write(&file, vec![b' '; (MAX_AUTH_FILE + 1) as usize]).unwrap();
        assert!(err(&paths).contains("larger than"));
        let fifo = AuthPaths {
            explicit: Some(dir.path().to_path_buf()),
            ..AuthPaths::default()
        };
        assert!(err(&fifo).contains("must be a regular file"));
    }

    #[test]
    fn credentials_debug_shows_no_values() {
        let c = Credentials {
            user: "alice".into(),
            password: "hunter2".into(),
            source: "--creds".into(),
        };
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("alice") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
