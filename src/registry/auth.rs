//! Registry authentication: credentials from `--creds` or the auth files
//! users keep (podman's and docker's), `WWW-Authenticate` challenges, Basic
//! auth, and bearer tokens shared by every request and thread of a client
//! until they expire. Credentials and tokens are never logged or printed:
//! errors name where credentials came from, never their values.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Deserialize;

use super::http::{one_line, status_message, Failure, Transport};
use super::reference::DEFAULT_REGISTRY;
use super::ClientOptions;
use crate::error::{Error, Result};

/// Largest auth file read.
const MAX_AUTH_FILE: u64 = 1 << 20;

/// Largest token response read (JWTs with certificate chains are a few KiB).
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;

/// A token's life when the token service does not say (the distribution
/// token spec's default).
const DEFAULT_TOKEN_LIFE: u64 = 60;

/// The longest life a token is trusted for, whatever the service says.
const MAX_TOKEN_LIFE: u64 = 24 * 3600;

/// A token is renewed this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(5);

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
    fn basic(&self) -> String {
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
    for file in &files {
        if let Some(creds) = lookup(file, registry, repository)? {
            let source = creds.source.clone();
            return Ok((Some(creds), source));
        }
    }
    let looked: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let none = format!(
        "anonymously (no credentials for {registry} in {})",
        if looked.is_empty() {
            "any auth file (no HOME)".to_string()
        } else {
            looked.join(", ")
        }
    );
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

/// The credentials auth file `file` has for `registry`/`repository`; none
/// when the file does not exist or has no entry.
fn lookup(file: &Path, registry: &str, repository: &str) -> Result<Option<Credentials>> {
    let Some(bytes) = read_bounded(file)? else {
        return Ok(None);
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
        return Ok(Some(Credentials {
            user: user.to_string(),
            password: password.to_string(),
            source: format!("credentials from {}", file.display()),
        }));
    }
    Ok(None)
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

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    /// The scheme, lowercased: `basic`, `bearer`.
    pub scheme: String,
    /// Its parameters (names lowercased), unquoted.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// Parameter `name` (lowercase).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The challenges of a `WWW-Authenticate` value (RFC 9110: `scheme
/// name=value, name="quoted, \"escaped\""`, challenges separated by
/// commas too). Malformed parts are skipped.
pub(crate) fn parse_challenges(header: &str) -> Vec<Challenge> {
    let s: Vec<char> = header.chars().collect();
    let mut i = 0;
    let mut out: Vec<Challenge> = Vec::new();
    let is_sep = |c: char| c == ',' || c == '=' || c == '"' || c.is_whitespace();
    let skip = |i: &mut usize, also_commas: bool| {
        while *i < s.len() && (s[*i].is_whitespace() || (also_commas && s[*i] == ',')) {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < s.len() && !is_sep(s[*i]) {
            *i += 1;
        }
        s[start..*i].iter().collect::<String>()
    };
    while i < s.len() {
        skip(&mut i, true);
        let start = i;
        let name = token(&mut i);
        if name.is_empty() {
            i = start + 1; // a stray separator
            continue;
        }
        let mut after = i;
        skip(&mut after, false);
        if after < s.len() && s[after] == '=' {
            // A parameter of the current challenge.
            i = after + 1;
            skip(&mut i, false);
            let value = if i < s.len() && s[i] == '"' {
                quoted(&s, &mut i)
            } else {
                token(&mut i)
            };
            if let Some(current) = out.last_mut() {
                current.params.push((name.to_ascii_lowercase(), value));
            }
        } else {
            out.push(Challenge {
                scheme: name.to_ascii_lowercase(),
                params: Vec::new(),
            });
        }
    }
    out
}

/// The quoted string starting at `s[*i]` (a `"`), unescaped; an
/// unterminated one runs to the end.
fn quoted(s: &[char], i: &mut usize) -> String {
    let mut value = String::new();
    *i += 1;
    while *i < s.len() {
        match s[*i] {
            '"' => {
                *i += 1;
                break;
            }
            '\\' if *i + 1 < s.len() => {
                value.push(s[*i + 1]);
                *i += 2;
            }
            c => {
                value.push(c);
                *i += 1;
            }
        }
    }
    value
}

/// A token service's answer.
#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// A bearer token and when to stop using it.
struct Token {
    value: String,
    renew_at: Instant,
}

/// The token from a token service's answer: `token`, else `access_token`,
/// with its life (`expires_in`, default 60 s).
fn parse_token(body: &[u8]) -> std::result::Result<(String, Duration), String> {
    let parsed: TokenResponse = serde_json::from_slice(body)
        .map_err(|e| format!("not a token response: {}", one_line(&e.to_string(), 120)))?;
    let value = parsed
        .token
        .filter(|t| !t.is_empty())
        .or(parsed.access_token.filter(|t| !t.is_empty()))
        .ok_or("the response has no token")?;
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token has characters a header cannot carry".into());
    }
    let life = parsed
        .expires_in
        .unwrap_or(DEFAULT_TOKEN_LIFE)
        .clamp(1, MAX_TOKEN_LIFE);
    Ok((value, Duration::from_secs(life)))
}

/// How a client authenticates to one repository: the credentials found,
/// the scheme the registry asked for, and the bearer tokens per scope.
pub(crate) struct Authenticator {
    repository: String,
    creds: Option<Credentials>,
    /// How the credentials (or their absence) are described in errors.
    tried: String,
    state: Mutex<State>,
    /// Held while fetching a token, so concurrent 401s fetch one.
    fetching: Mutex<()>,
}

/// What the registry asked for so far.
#[derive(Default)]
struct State {
    basic: bool,
    scope: Option<String>,
    tokens: HashMap<String, Token>,
}

impl Authenticator {
    /// The authenticator for `registry`/`repository`, with credentials
    /// found as [`find_credentials`] does.
    pub fn new(
        options: &ClientOptions,
        paths: &AuthPaths,
        registry: &str,
        repository: &str,
    ) -> Result<Self> {
        let (creds, tried) = find_credentials(options, paths, registry, repository)?;
        Ok(Self {
            repository: repository.to_string(),
            creds,
            tried,
            state: Mutex::new(State::default()),
            fetching: Mutex::new(()),
        })
    }

    /// The `Authorization` value to send now, if any.
    pub fn header(&self) -> Option<String> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(scope) = &state.scope {
            if let Some(token) = state.tokens.get(scope) {
                if Instant::now() < token.renew_at {
                    return Some(format!("Bearer {}", token.value));
                }
            }
        }
        match &self.creds {
            Some(creds) if state.basic => Some(creds.basic()),
            _ => None,
        }
    }

    /// The error for a refusal (`status` 401 or 403) of `what`, naming the
    /// credentials' source.
    pub fn denied(&self, what: &str, status: u16) -> Error {
        let how = match &self.creds {
            Some(creds) => format!("with {}", creds.source),
            None => self.tried.clone(),
        };
        Error::Registry(format!("{what}: access denied (HTTP {status}) {how}"))
    }

    /// Answers a 401 whose request carried `sent`: takes up the challenge
    /// in `www_authenticate` (Basic: the credentials; Bearer: a token from
    /// the realm, unless another thread already brought a fresh one).
    pub fn on_unauthorized(
        &self,
        transport: &Transport,
        what: &str,
        www_authenticate: Option<&str>,
        sent: Option<&str>,
    ) -> Result<()> {
        let challenges = www_authenticate.map(parse_challenges).unwrap_or_default();
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            return self.bearer(transport, what, bearer, sent);
        }
        if challenges.iter().any(|c| c.scheme == "basic") && self.creds.is_some() {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if !state.basic {
                state.basic = true;
                return Ok(());
            }
        }
        Err(self.denied(what, 401))
    }

    /// Takes up a Bearer challenge: a token for its scope (ours if it
    /// names none) from its realm.
    fn bearer(
        &self,
        transport: &Transport,
        what: &str,
        challenge: &Challenge,
        sent: Option<&str>,
    ) -> Result<()> {
        let realm = challenge.param("realm").unwrap_or_default();
        if !transport.allows(realm) {
            return Err(Error::Registry(format!(
                "{what}: the registry's token realm {:?} is not an https URL{}",
                one_line(realm, 200),
                " (http only with --insecure)"
            )));
        }
        let scope = challenge
            .param("scope")
            .map(str::to_string)
            .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        let _one_fetch = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.scope = Some(scope.clone());
            if let Some(token) = state.tokens.get(&scope) {
                let fresh = Instant::now() < token.renew_at;
                let same = sent.and_then(|s| s.strip_prefix("Bearer ")) == Some(&token.value);
                if fresh && !same {
                    return Ok(()); // another thread brought it meanwhile
                }
            }
        }
        let what = format!("{what}: token service {}", one_line(realm, 200));
        let (value, life) =
            self.fetch_token(transport, &what, realm, challenge.param("service"), &scope)?;
        let renew_at = Instant::now() + life.saturating_sub(TOKEN_MARGIN.min(life / 2));
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.tokens.insert(scope, Token { value, renew_at });
        Ok(())
    }

    /// A token for `scope` from `realm`, with the credentials if any;
    /// errors begin with `what`.
    fn fetch_token(
        &self,
        transport: &Transport,
        what: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(String, Duration)> {
        let mut url = realm.to_string();
        let mut sep = if realm.contains('?') { '&' } else { '?' };
        for (name, value) in [("service", service), ("scope", Some(scope))] {
            if let Some(value) = value {
                url.push_str(&format!("{sep}{name}={}", percent_encode(value)));
                sep = '&';
            }
        }
        let basic = self.creds.as_ref().map(Credentials::basic);
        tracing::debug!("{what}: requesting a token for {scope}");
        transport.retrying(what, || {
            let headers: Vec<(&str, &str)> = basic
                .as_deref()
                .map(|b| ("Authorization", b))
                .into_iter()
                .collect();
            let mut response = transport.get(&url, &headers)?;
            let status = response.status().as_u16();
            if status == 401 || status == 403 {
                return Err(self.denied(what, status).into());
            }
            if status != 200 {
                let message = status_message(&mut response);
                return Err(Error::Registry(format!("{what}: {message}")).into());
            }
            let mut body = Vec::new();
            response
                .body_mut()
                .as_reader()
                .take(MAX_TOKEN_RESPONSE)
                .read_to_end(&mut body)
                .map_err(|e| Failure::transient(e.to_string()))?;
            parse_token(&body).map_err(|why| Error::Registry(format!("{what}: {why}")).into())
        })
    }
}

/// `text` percent-encoded for a query value (all but RFC 3986's
/// unreserved characters).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param<'a>(c: &'a Challenge, name: &str) -> &'a str {
        c.param(name).unwrap()
    }

    #[test]
    fn bearer_challenge_with_quoted_commas() {
        let h = r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#;
        let c = parse_challenges(h);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(param(&c[0], "realm"), "https://auth.example/token");
        assert_eq!(param(&c[0], "service"), "registry.example");
        assert_eq!(param(&c[0], "scope"), "repository:a/b:pull,push");
    }

    #[test]
    fn several_challenges_tokens_escapes_and_spaces() {
        let h = r#"Basic realm="a \"quoted\" realm" , BEARER Realm = https://x/t , error=invalid_token"#;
        let c = parse_challenges(h);
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(param(&c[0], "realm"), r#"a "quoted" realm"#);
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(param(&c[1], "realm"), "https://x/t");
        assert_eq!(param(&c[1], "error"), "invalid_token");
    }

    #[test]
    fn malformed_challenges_end() {
        for h in [
            "",
            ",,,",
            "=",
            "Bearer realm=\"unterminated",
            "\"\"\"",
            "Bearer ===,=,\"",
            "Negotiate abc==",
        ] {
            let _ = parse_challenges(h);
        }
        let c = parse_challenges("Bearer realm=\"unterminated");
        assert_eq!(param(&c[0], "realm"), "unterminated");
    }

    #[test]
    fn token_or_access_token_with_default_life() {
        let (t, life) = parse_token(br#"{"token":"abc","expires_in":300}"#).unwrap();
        assert_eq!((t.as_str(), life.as_secs()), ("abc", 300));
        let (t, life) = parse_token(br#"{"access_token":"xyz"}"#).unwrap();
        assert_eq!((t.as_str(), life.as_secs()), ("xyz", 60));
        assert!(parse_token(br#"{"token":""}"#).is_err());
        assert!(parse_token(br#"{"token":"a\r\nX: y"}"#).is_err());
        assert!(parse_token(b"[]").is_err());
    }

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

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            percent_encode("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
    }
}
