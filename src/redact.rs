//! The one redaction of everything that leaves the process: log lines, the free text written to
//! the reconciler's tables, reports, `explain`, `check-config`, `/readyz` and the error line.
//!
//! Client libraries repeat what they were given (reqwest puts the request URL in its errors, sqlx
//! its connection options, the AWS SDK signed headers in its debug logs), so hiding a secret where
//! our own code prints it is not enough: every exit passes its text through [`text`]. It hides
//! secrets by their shape (a URL's password, `token=`-style parameters, presigned signatures) and,
//! for values without a telling shape, by their value: the configured secrets are registered once
//! at startup with [`remember`].

use std::sync::RwLock;
use url::Url;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Registered secrets shorter than this are not replaced in free text: `test`, the secret key of
/// every local S3 emulator, would turn each word holding those letters into `***`. Where its
/// place gives a secret away (a URL's password, a `password=` parameter) it is hidden whatever
/// its length.
const MIN_KNOWN_LEN: usize = 8;

/// The configured secret values, longest first (so a secret holding another is replaced whole).
static KNOWN: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Hide these values wherever they appear in text from now on.
pub fn remember<I, S>(secrets: I)
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut known = KNOWN
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for secret in secrets {
        let secret = secret.into();
        if secret.len() >= MIN_KNOWN_LEN && secret != MASK && !known.contains(&secret) {
            known.push(secret);
        }
    }
    known.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// Hide the values of these environment variables (credentials the AWS SDK reads by itself).
pub fn remember_env(names: &[&str]) {
    remember(names.iter().filter_map(|name| std::env::var(name).ok()));
}

/// Any text on its way out: registered secrets, every URL in it (see [`url`]), and
/// `password=`-style assignments (`Signature=` of a signed request's header, a libpq `password=`).
pub fn text(raw: &str) -> String {
    let known = replace_known(raw);
    let mut out = String::with_capacity(known.len());
    let mut rest = known.as_str();
    while let Some((start, end)) = next_url(rest) {
        out.push_str(&scrub_assignments(&rest[..start]));
        out.push_str(&url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(&scrub_assignments(rest));
    out
}

/// A URL fit for logs and errors: its password and its secret-looking query parameters
/// (`password=`, `token=`, `key=`, presigned `X-Amz-Signature=`...) shown as `***`. It is read by
/// the parser sqlx and reqwest use, so what is hidden is what they would send; whatever it reads
/// as a URL is scrubbed as one, `//` or not, as [`secrets_in_url`] finds secrets (the rules for
/// free text would miss a `#key=` and stop a value at a comma). A URL that parser refuses, or
/// that puts `user:...@` somewhere it would not read as credentials (a raw `/`, `?` or `#` in a
/// password), loses everything between `://` and its last `@`.
pub fn url(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(parsed) if !has_misplaced_userinfo(&parsed, raw) => scrub_parsed(parsed, raw),
        _ => conservative(raw),
    }
}

/// A webhook URL fit for logs and errors: its scheme and host (and port) only. Slack- and
/// Discord-style hook URLs carry their secret in the path (`/services/T0AAA/B0BBB/<token>`),
/// others in the query or the user info: none of them is shown. A URL the parser refuses keeps
/// what stands between `://` and the first `/`, `?` or `#`, without its user info.
pub fn endpoint(raw: &str) -> String {
    if let Ok(parsed) = Url::parse(raw)
        && let Some(host) = parsed.host_str()
    {
        return match parsed.port() {
            Some(port) => format!("{}://{host}:{port}", parsed.scheme()),
            None => format!("{}://{host}", parsed.scheme()),
        };
    }
    match raw.split_once("://") {
        Some((scheme, rest)) => {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            let host = authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host);
            format!("{scheme}://{host}")
        }
        None => MASK.to_owned(),
    }
}

/// The secret values in a URL, as written and percent-decoded: for [`remember`].
pub fn secrets_in_url(raw: &str) -> Vec<String> {
    let parsed = match Url::parse(raw) {
        Ok(parsed) if !has_misplaced_userinfo(&parsed, raw) => parsed,
        _ => return userinfo_password(raw).into_iter().collect(),
    };
    let mut secrets = Vec::new();
    if let Some(password) = parsed.password() {
        secrets.push(password.to_owned());
        secrets.push(decoded(password));
    }
    for part in [parsed.query(), parsed.fragment()].into_iter().flatten() {
        for (name, value) in part.split('&').filter_map(|pair| pair.split_once('=')) {
            if is_secret_name(name, true) {
                secrets.push(value.to_owned());
                secrets.push(decoded(value));
            }
        }
    }
    secrets
}

/// The secrets of a webhook URL (see [`endpoint`]): those of [`secrets_in_url`], the query
/// string and each of its values, and the path with each of its segments that looks like a
/// token (a library that repeats the URL, or a server that echoes the path, shows them).
pub fn secrets_in_endpoint(raw: &str) -> Vec<String> {
    let mut secrets = secrets_in_url(raw);
    let queries = [
        Url::parse(raw)
            .ok()
            .and_then(|u| u.query().map(str::to_owned)),
        raw.split_once('?')
            .map(|(_, q)| q.split('#').next().unwrap_or_default().to_owned()),
    ];
    for query in queries.into_iter().flatten() {
        for pair in query.split('&') {
            let value = pair.split_once('=').map_or(pair, |(_, value)| value);
            secrets.push(value.to_owned());
            secrets.push(decoded(value));
        }
        secrets.push(query);
    }
    let paths = [
        Url::parse(raw).ok().map(|u| u.path().to_owned()),
        raw.split_once("://").and_then(|(_, rest)| {
            rest.find('/').map(|at| {
                rest[at..]
                    .split(['?', '#'])
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
        }),
    ];
    for path in paths.into_iter().flatten() {
        let tokens: Vec<&str> = path.split('/').filter(|s| looks_like_token(s)).collect();
        for token in &tokens {
            secrets.push((*token).to_owned());
            secrets.push(decoded(token));
        }
        if !tokens.is_empty() {
            secrets.push(decoded(&path));
            secrets.push(path);
        }
    }
    secrets
}

/// A path segment that is not a plain word (`services`, `api`, `webhooks`): it holds a digit
/// or a capital, or is long. Ids and tokens look like this; route names do not.
fn looks_like_token(segment: &str) -> bool {
    segment.len() >= 16
        || segment
            .chars()
            .any(|c| !(c.is_ascii_lowercase() || "-_.".contains(c)))
}

fn replace_known(raw: &str) -> String {
    let known = KNOWN
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut text = raw.to_owned();
    for secret in known.iter() {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), MASK);
        }
    }
    text
}

fn decoded(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// The URL parser put no credentials in the authority, yet `user:...@` shows further on: a
/// password with a raw `/`, `?` or `#` cut the authority short, or the URL has no `//`
/// (`postgres:/app:pw@db/app`: the parser reads it all as a path). sqlx would not send it
/// either, but it is still a password to hide.
fn has_misplaced_userinfo(parsed: &Url, raw: &str) -> bool {
    if parsed.password().is_some() {
        return false;
    }
    match (userinfo_start(raw), raw.rfind('@')) {
        (Some(start), Some(at)) if at > start => raw[start..at].contains(':'),
        _ => false,
    }
}

/// Where the user info would start: after `scheme:` and the slashes that follow it (two in a
/// well-formed URL, maybe one or none in a mistyped one). `None` for text with no scheme.
fn userinfo_start(raw: &str) -> Option<usize> {
    let scheme_len = raw
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b))
        .count();
    let starts_as_scheme = raw.as_bytes().first().is_some_and(u8::is_ascii_alphabetic);
    if !starts_as_scheme || raw.as_bytes().get(scheme_len) != Some(&b':') {
        return None;
    }
    let slashes = raw[scheme_len + 1..]
        .bytes()
        .take_while(|b| *b == b'/')
        .count();
    Some(scheme_len + 1 + slashes)
}

/// Everything between the scheme (and its slashes) and the last `@`, as conservatively as the
/// URL can be read.
fn conservative(raw: &str) -> String {
    match (userinfo_start(raw), raw.rfind('@')) {
        (Some(start), Some(at)) if at >= start => format!(
            "{}{MASK}@{}",
            &raw[..start],
            scrub_assignments(&raw[at + 1..])
        ),
        _ => scrub_assignments(raw),
    }
}

/// The password of a URL the parser refuses, read as [`conservative`] reads it.
fn userinfo_password(raw: &str) -> Option<String> {
    let start = userinfo_start(raw)?;
    let at = raw.rfind('@').filter(|at| *at >= start)?;
    let (_user, password) = raw[start..at].split_once(':')?;
    Some(password.to_owned())
}

/// The parsed URL with its secrets masked; the text as written when it holds none, so a URL
/// that needs no redaction reads exactly as the user wrote it.
fn scrub_parsed(mut parsed: Url, raw: &str) -> String {
    let mut changed = false;
    if parsed.password().is_some() {
        changed |= parsed.set_password(Some(MASK)).is_ok();
    }
    if let Some(query) = parsed.query().map(scrub_pairs).and_then(changed_only) {
        parsed.set_query(Some(&query));
        changed = true;
    }
    if let Some(fragment) = parsed.fragment().map(scrub_pairs).and_then(changed_only) {
        parsed.set_fragment(Some(&fragment));
        changed = true;
    }
    if changed {
        parsed.to_string()
    } else {
        raw.to_owned()
    }
}

fn changed_only((text, changed): (String, bool)) -> Option<String> {
    changed.then_some(text)
}

/// `a=1&token=x` -> `a=1&token=***`, and whether anything was masked.
fn scrub_pairs(query: &str) -> (String, bool) {
    let mut changed = false;
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) if is_secret_name(name, true) && value != MASK => {
                changed = true;
                format!("{name}={MASK}")
            }
            _ => pair.to_owned(),
        })
        .collect();
    (pairs.join("&"), changed)
}

/// `name=value` in free text with a secret-looking name: the value masked. A name right after
/// `?` or `&` is a query parameter, read with the wider list (`key=`, `sig=`...); elsewhere only
/// names that cannot mean anything but a secret count, so a log field `key=docs/a` stays.
fn scrub_assignments(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(eq) = text[search..].find('=').map(|i| i + search) {
        let mut name_start = eq;
        // Name characters are ASCII, so stepping back a byte never lands inside a character.
        while name_start > 0 && is_name_byte(bytes[name_start - 1]) {
            name_start -= 1;
        }
        let value_start = eq + 1;
        let value_end = text[value_start..]
            .find(ends_value)
            .map_or(text.len(), |i| value_start + i);
        let in_query = text[..name_start].ends_with(['?', '&']);
        let value = &text[value_start..value_end];
        if !value.is_empty() && value != MASK && is_secret_name(&text[name_start..eq], in_query) {
            out.push_str(&text[copied..value_start]);
            out.push_str(MASK);
            copied = value_end;
            search = value_end;
        } else {
            // A harmless value may hold the next assignment: `conn=db?password=pw`.
            search = value_start;
        }
    }
    out.push_str(&text[copied..]);
    out
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

fn ends_value(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(
            c,
            '&' | '"' | '\'' | ',' | ';' | ')' | ']' | '}' | '<' | '>' | '\\'
        )
}

/// Names that hold a secret wherever they appear.
const SECRET_WORDS: [&str; 8] = [
    "password",
    "passwd",
    "secret",
    "token",
    "signature",
    "credential",
    "apikey",
    "api_key",
];

/// Query parameter names that hold a secret (as a whole name, or one `-`/`_`/`.` separated word
/// of it: `key`, `api-key`, `X-Goog-Sig`...).
const SECRET_PARAMETER_WORDS: [&str; 6] = ["key", "sig", "pwd", "pass", "auth", "code"];

fn is_secret_name(name: &str, in_query: bool) -> bool {
    let name = name.to_ascii_lowercase();
    if name.is_empty() {
        return false;
    }
    SECRET_WORDS.iter().any(|word| name.contains(word))
        || (in_query
            && name
                .split(['-', '_', '.'])
                .any(|word| SECRET_PARAMETER_WORDS.contains(&word)))
}

/// The next URL (`scheme://...`) in free text, as a byte range: it ends at a space, a quote or an
/// angle bracket, without the punctuation of the sentence around it.
fn next_url(text: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(sep) = text[from..].find("://").map(|i| i + from) {
        let mut start = sep;
        while start > 0
            && (bytes[start - 1].is_ascii_alphanumeric() || b"+-.".contains(&bytes[start - 1]))
        {
            start -= 1;
        }
        // A scheme begins with a letter.
        while start < sep && !bytes[start].is_ascii_alphabetic() {
            start += 1;
        }
        let after = sep + 3;
        if start == sep {
            from = after;
            continue;
        }
        let mut end = text[after..]
            .find(ends_url)
            .map_or(text.len(), |i| after + i);
        while end > after {
            let token = &text[start..end];
            let unbalanced = |open: char, close: char| {
                token.ends_with(close) && token.matches(open).count() < token.matches(close).count()
            };
            if token.ends_with(['.', ',', ';', ':', '!', '?'])
                || unbalanced('(', ')')
                || unbalanced('[', ']')
            {
                end -= 1;
            } else {
                break;
            }
        }
        return Some((start, end));
    }
    None
}

fn ends_url(c: char) -> bool {
    c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '<' | '>' | '`' | '\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords_and_secret_parameters() {
        let cases = [
            // (written, shown)
            (
                "postgres://app:s3cret@db:5432/app",
                "postgres://app:***@db:5432/app",
            ),
            ("postgres://app@db/app", "postgres://app@db/app"),
            ("postgres://db/app", "postgres://db/app"),
            // A password with every character that cuts a URL short.
            (
                "postgres://u:p/w?#x@127.0.0.1:1/db",
                "postgres://***@127.0.0.1:1/db",
            ),
            ("postgres://u:p@ss@db/app", "postgres://u:***@db/app"),
            ("postgres://u:a:b@db/app", "postgres://u:***@db/app"),
            ("postgres://u:12/w?#x@db:1/app", "postgres://***@db:1/app"),
            ("postgres://u:p%40ss@db/app", "postgres://u:***@db/app"),
            // Without `//` the parser reads the credentials as a path.
            ("postgres:/app:pw@db/app", "postgres:/***@db/app"),
            ("postgresql:app:pw@db/app", "postgresql:***@db/app"),
            ("postgres:app@db/app", "postgres:app@db/app"),
            (
                "postgresql://u@127.0.0.1:1/x?password=PWQUERY123",
                "postgresql://u@127.0.0.1:1/x?password=***",
            ),
            (
                "postgresql://u@h/x?sslmode=require&PassWord=PW&application_name=r",
                "postgresql://u@h/x?sslmode=require&PassWord=***&application_name=r",
            ),
            (
                "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256\
                 &X-Amz-Credential=AKIA%2F20261125%2Fus-east-1%2Fs3%2Faws4_request\
                 &X-Amz-Date=20261125T000000Z&X-Amz-Expires=900\
                 &X-Amz-Security-Token=FwoGZX&X-Amz-SignedHeaders=host&X-Amz-Signature=abc123",
                "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256\
                 &X-Amz-Credential=***&X-Amz-Date=20261125T000000Z&X-Amz-Expires=900\
                 &X-Amz-Security-Token=***&X-Amz-SignedHeaders=host&X-Amz-Signature=***",
            ),
            (
                "http://h/hook?token=t&key=k&api-key=a&sig=s&page=2",
                "http://h/hook?token=***&key=***&api-key=***&sig=***&page=2",
            ),
            ("http://h/cb#access_token=t", "http://h/cb#access_token=***"),
            // Nothing to hide: the text as written, not the parser's rewrite of it.
            ("s3://b/a{b}", "s3://b/a{b}"),
            ("not a url", "not a url"),
            // Found by fuzz/fuzz_targets/config_load.rs (a database.url of `s:#key=...`): read
            // as URLs without `//` too, as secrets_in_url reads them.
            ("s:#key=r@x1y2z3", "s:#key=***"),
            ("postgres:/db?password=ab,cd", "postgres:/db?password=***"),
            ("localhost:5432", "localhost:5432"),
            ("conn password=pw host=h", "conn password=*** host=h"),
        ];
        for (written, shown) in cases {
            assert_eq!(url(written), shown, "url({written:?})");
        }
    }

    #[test]
    fn an_endpoint_shows_its_scheme_and_host_only() {
        let cases = [
            ("https://h/p?token=s3cret", "https://h"),
            ("https://h/p?code=1&x=y", "https://h"),
            ("https://u:pw@h/p", "https://h"),
            ("https://h/p", "https://h"),
            (
                "http://127.0.0.1:8080/services/T0AAA/B0BBB/tok",
                "http://127.0.0.1:8080",
            ),
            ("https://H:443/api/webhooks/1/tok", "https://h"),
            ("http://[::1]:9/x#frag", "http://[::1]:9"),
            // Refused by the parser (a port out of range): cut at the path all the same.
            ("http://u:pw@h:99999/services/T/B/tok?x", "http://h:99999"),
            ("not a url /services/tok", "***"),
        ];
        for (written, shown) in cases {
            assert_eq!(endpoint(written), shown, "endpoint({written:?})");
        }
    }

    #[test]
    fn an_endpoint_s_path_tokens_are_secrets_and_its_route_words_are_not() {
        let secrets = secrets_in_endpoint("https://h/services/T0AAA/B0BBB/XXsecretTOKEN?x=1");
        for secret in [
            "XXsecretTOKEN",
            "/services/T0AAA/B0BBB/XXsecretTOKEN",
            "T0AAA",
        ] {
            assert!(secrets.iter().any(|s| s == secret), "{secret}: {secrets:?}");
        }
        assert!(!secrets.iter().any(|s| s == "services"), "{secrets:?}");
        let plain = secrets_in_endpoint("https://h/api/process");
        assert!(plain.is_empty(), "{plain:?}");
    }

    #[test]
    fn text_hides_every_url_and_assignment_in_it() {
        let cases = [
            (
                "error sending request for url (http://127.0.0.1:1/hook?token=SECRET): refused",
                "error sending request for url (http://127.0.0.1:1/hook?token=***): refused",
            ),
            (
                "connecting to postgres://a:pw1@h/db, then postgres://b:pw2@h/db.",
                "connecting to postgres://a:***@h/db, then postgres://b:***@h/db.",
            ),
            (
                r#"{"message":"GET \"https://b/k?X-Amz-Signature=ff&x=1\" failed"}"#,
                r#"{"message":"GET \"https://b/k?X-Amz-Signature=***&x=1\" failed"}"#,
            ),
            (
                "Authorization: AWS4-HMAC-SHA256 Credential=AKIA/2026/us-east-1/s3/aws4_request, \
                 SignedHeaders=host, Signature=deadbeef",
                "Authorization: AWS4-HMAC-SHA256 Credential=***, \
                 SignedHeaders=host, Signature=***",
            ),
            (
                "GET /hook?token=abc HTTP/1.1",
                "GET /hook?token=*** HTTP/1.1",
            ),
            (
                "a bare postgres://u:p/w?#x@h:1/db",
                "a bare postgres://***@h:1/db",
            ),
            // Found by fuzz/fuzz_targets/config_load.rs: the harmless `=` before it hid the
            // secret in its value.
            ("sqlite:=?key=s3cr3t", "sqlite:=?key=***"),
            ("conn=db?password=pw, x=1", "conn=db?password=***, x=1"),
        ];
        for (raw, shown) in cases {
            assert_eq!(text(raw), shown, "text({raw:?})");
        }
    }

    #[test]
    fn text_without_secrets_is_untouched() {
        for raw in [
            "swept 12 objects, key=docs/a doc_id=a attempt=2",
            "pending 2h10m, no object",
            "see https://example.com/docs/errors#E42 (or http://h:8080/x).",
            "ratio=0.5 in s3://uploads/docs/ab c",
            "",
            "ünïcödé = façade ?=& ://",
        ] {
            assert_eq!(text(raw), raw);
        }
    }

    #[test]
    fn registered_secrets_are_hidden_anywhere_longest_first() {
        remember(["Zq81-registered-secret", "Zq81-registered", "Zq81-rs"]);
        assert_eq!(
            text("auth failed for Zq81-registered-secret (was Zq81-registered)"),
            "auth failed for *** (was ***)"
        );
        // Too short to hide in prose without hiding half the words.
        assert_eq!(text("Zq81-rs"), "Zq81-rs");
    }

    #[test]
    fn the_secrets_of_a_url_are_found_for_registration() {
        let found = secrets_in_url("postgres://u:p%40ss@h/db?password=q&x=1");
        for secret in ["p%40ss", "p@ss", "q"] {
            assert!(found.contains(&secret.to_owned()), "{secret} in {found:?}");
        }
        assert_eq!(
            secrets_in_url("postgres://u:p/w?#x@127.0.0.1:1/db"),
            ["p/w?#x"]
        );
        assert_eq!(secrets_in_url("postgres:/app:pw@db/app"), ["pw"]);
        let found = secrets_in_endpoint("http://h/hook?code=Hk27&v=2");
        for secret in ["code=Hk27&v=2", "Hk27"] {
            assert!(found.contains(&secret.to_owned()), "{secret} in {found:?}");
        }
    }
}
