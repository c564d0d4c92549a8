//! Registry authentication: `WWW-Authenticate` challenges, Basic auth,
//! and bearer tokens shared by every request and thread of a client until
//! they expire. Credentials and tokens are never logged or printed.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::credentials::{find_credentials, AuthPaths, Credentials};
use super::http::{one_line, status_message, Failure, Transport};
use super::ClientOptions;
use crate::error::{Error, Result};

/// Largest token response read (JWTs with certificate chains are a few KiB).
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;

/// A token's life when the token service does not say (the distribution
/// token spec's default).
const DEFAULT_TOKEN_LIFE: u64 = 60;

/// The longest life a token is trusted for, whatever the service says.
const MAX_TOKEN_LIFE: u64 = 24 * 3600;

/// A token is renewed this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(5);

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
    /// Whether tokens are asked for with push rights (`attach`).
    push: std::sync::atomic::AtomicBool,
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
            push: std::sync::atomic::AtomicBool::new(false),
            fetching: Mutex::new(()),
        })
    }

    /// From now on, tokens for this repository are asked for with
    /// `pull,push` scope (one token serves the reads and the uploads).
    pub fn want_push(&self) {
        self.push.store(true, std::sync::atomic::Ordering::Relaxed);
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
        let pull = format!("repository:{}:pull", self.repository);
        let mut scope = challenge
            .param("scope")
            .map(str::to_string)
            .unwrap_or_else(|| pull.clone());
        if scope == pull && self.push.load(std::sync::atomic::Ordering::Relaxed) {
            scope.push_str(",push");
        }
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
pub(super) fn percent_encode(text: &str) -> String {
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

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            percent_encode("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
    }
}
