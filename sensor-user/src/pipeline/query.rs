//! Application queries from TLS plaintext. An HTTP/1.1 request becomes method + host + path
//! **template**; HTTP/2 writes are counted by their HEADERS frames (the paths are
//! HPACK-compressed). The plaintext is dropped as soon as it is parsed.
//!
//! A template keeps only what names the route, never what names a record or a person:
//! - identifiers (numbers, UUIDs, long hex, mixed letters and digits, dates, e-mail
//!   addresses) become `{n}`, `{uuid}`, `{hex}`, `{id}`, `{date}`, `{email}`, and their keyed
//!   hashes are returned for a distinct count (they never leave the agent as themselves);
//! - route words (a built-in list plus `intel.query_route_words`) stay as they are;
//! - any other segment becomes `{h:…}`, a keyed hash, while its position in the route has
//!   held at most [`MAX_LITERALS`] different values; past that the position is a parameter,
//!   `{p}`, and its values are counted as identifiers (a search by name in the path becomes
//!   `/search/{p}`, and the names a distinct count);
//! - query strings keep their parameter names (sorted) only when they are route words or
//!   common API parameter names ([`PARAMETER_WORDS`]); any other name (`?dupont`,
//!   `?dupont=1`) is hidden the way a path segment is: a keyed hash `{h:…}` while the route
//!   has seen at most [`MAX_LITERALS`] such names, `{k}` (and counted) past that. Values are
//!   never kept; values that look like identifiers are counted.

use std::collections::{HashMap, HashSet};

/// Different values a non-route segment may take at one position before it is a parameter.
pub const MAX_LITERALS: usize = 8;
/// Positions remembered (beyond, the memory is cleared and learning starts again).
const MAX_POSITIONS: usize = 20_000;

/// Words that name routes in web APIs, kept verbatim in templates.
const ROUTE_WORDS: &[&str] = &[
    "api",
    "rest",
    "rpc",
    "graphql",
    "v1",
    "v2",
    "v3",
    "v4",
    "v5",
    "public",
    "private",
    "internal",
    "admin",
    "auth",
    "oauth",
    "oauth2",
    "token",
    "tokens",
    "login",
    "logout",
    "session",
    "sessions",
    "user",
    "users",
    "account",
    "accounts",
    "me",
    "profile",
    "search",
    "find",
    "list",
    "query",
    "export",
    "import",
    "download",
    "upload",
    "sync",
    "batch",
    "bulk",
    "patient",
    "patients",
    "record",
    "records",
    "document",
    "documents",
    "file",
    "files",
    "appointment",
    "appointments",
    "agenda",
    "calendar",
    "consultation",
    "consultations",
    "prescription",
    "prescriptions",
    "invoice",
    "invoices",
    "billing",
    "payment",
    "payments",
    "doctor",
    "doctors",
    "practitioner",
    "practitioners",
    "clinic",
    "clinics",
    "note",
    "notes",
    "report",
    "reports",
    "result",
    "results",
    "lab",
    "labs",
    "message",
    "messages",
    "contact",
    "contacts",
    "settings",
    "config",
    "status",
    "health",
    "ping",
    "version",
    "update",
    "updates",
    "static",
    "assets",
    "images",
    "img",
    "css",
    "js",
    "index",
    "details",
    "history",
    "summary",
    "new",
    "edit",
    "delete",
    "create",
    "items",
    "data",
    "events",
    "notifications",
    "fhir",
    "hl7",
    "dmp",
    "ins",
    "vitale",
    "carte",
];

/// Query-string parameter names of web APIs, kept verbatim besides the route words (they
/// name how a route is asked, never a record or a person).
const PARAMETER_WORDS: &[&str] = &[
    "id",
    "ids",
    "page",
    "per_page",
    "page_size",
    "pagesize",
    "size",
    "limit",
    "offset",
    "cursor",
    "start",
    "end",
    "from",
    "to",
    "since",
    "until",
    "sort",
    "order",
    "orderby",
    "fields",
    "include",
    "expand",
    "filter",
    "q",
    "type",
    "format",
    "lang",
    "locale",
    "count",
    "state",
    "code",
    "scope",
    "client_id",
    "redirect_uri",
    "response_type",
    "grant_type",
    "access_token",
    "refresh_token",
    "name",
    "nom",
    "prenom",
    "date",
    "time",
    "doctor",
    "patient",
    "status",
    "_",
    "t",
    "ts",
    "v",
];

/// An HTTP/1.1 request line and host, as parsed (borrowed from the captured bytes).
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub host: &'a str,
}

/// What a plaintext write holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Write<'a> {
    Http1(Request<'a>),
    /// HTTP/2 frames: how many HEADERS frames (requests) start in the captured bytes.
    Http2 {
        requests: u32,
    },
    /// Not the start of a request (a body, another protocol).
    Other,
}

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "PROPFIND", "REPORT",
];
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Parses the start of a plaintext write.
pub fn parse(data: &[u8]) -> Write<'_> {
    if let Some(r) = parse_http1(data) {
        return Write::Http1(r);
    }
    match h2_requests(data) {
        Some(n) => Write::Http2 { requests: n },
        None => Write::Other,
    }
}

fn parse_http1(data: &[u8]) -> Option<Request<'_>> {
    let line_end = data.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&data[..line_end]).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !METHODS.contains(&method) || !version.starts_with("HTTP/1.") {
        return None;
    }
    let mut host = "";
    // Headers as far as they were captured; a line cut short is ignored.
    let mut rest = &data[line_end + 2..];
    while let Some(end) = rest.windows(2).position(|w| w == b"\r\n") {
        if end == 0 {
            break;
        }
        if let Ok(h) = std::str::from_utf8(&rest[..end]) {
            if let Some((name, value)) = h.split_once(':') {
                if name.eq_ignore_ascii_case("host") {
                    host = value.trim();
                    break;
                }
            }
        }
        rest = &rest[end + 2..];
    }
    Some(Request {
        method,
        target,
        host,
    })
}

/// HEADERS frames in a write made of HTTP/2 frames (after the preface, if any); `None` when
/// the bytes are not a run of plausible frame headers.
fn h2_requests(data: &[u8]) -> Option<u32> {
    let mut rest = data.strip_prefix(H2_PREFACE).unwrap_or(data);
    let preface = rest.len() != data.len();
    let mut headers = 0;
    let mut frames = 0;
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        let kind = rest[3];
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        // Types 0..=9 are HTTP/2's; frames of a stream other than 0 are the stream's.
        if kind > 9 || len > 1 << 24 {
            return None;
        }
        if kind == 1 && stream != 0 {
            headers += 1;
        }
        frames += 1;
        if rest.len() < 9 + len {
            break; // the frame goes on past what was captured
        }
        rest = &rest[9 + len..];
    }
    (preface || frames > 0 && (headers > 0 || rest.is_empty())).then_some(headers)
}

/// How a path segment or parameter value reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Number,
    Uuid,
    Hex,
    Id,
    Date,
    Email,
    Word,
}

fn classify(s: &str) -> Class {
    let b = s.as_bytes();
    if !b.is_empty() && b.iter().all(u8::is_ascii_digit) {
        return Class::Number;
    }
    if s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
    {
        return Class::Uuid;
    }
    if s.len() >= 12 && b.iter().all(u8::is_ascii_hexdigit) {
        return Class::Hex;
    }
    if s.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
    {
        return Class::Date;
    }
    if s.contains('@') {
        return Class::Email;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    if s.len() >= 6
        && digits > 0
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_' || *c == b'.')
    {
        return Class::Id;
    }
    Class::Word
}

fn placeholder(c: Class) -> &'static str {
    match c {
        Class::Number => "{n}",
        Class::Uuid => "{uuid}",
        Class::Hex => "{hex}",
        Class::Id => "{id}",
        Class::Date => "{date}",
        Class::Email => "{email}",
        Class::Word => "{p}",
    }
}

/// A query reduced: what leaves the agent (in counts) and the keyed hashes of the
/// identifiers it carried (for a distinct count, never shipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub method: String,
    pub host: String,
    /// `/api/v1/patients/{n}?fields&page`.
    pub path: String,
    pub ids: Vec<u64>,
}

/// Makes templates; remembers, per route position, the values seen there.
pub struct Templater {
    /// Keyed hash of a value (the clinic's privacy key).
    hash: Box<dyn Fn(&str) -> u64 + Send>,
    words: HashSet<String>,
    /// Query-string parameter names kept verbatim: the words and [`PARAMETER_WORDS`].
    parameters: HashSet<String>,
    positions: HashMap<String, Position>,
}

#[derive(Default)]
struct Position {
    values: HashSet<u64>,
    parameter: bool,
}

impl Templater {
    pub fn new(hash: Box<dyn Fn(&str) -> u64 + Send>, extra_words: &[String]) -> Templater {
        let mut words: HashSet<String> = ROUTE_WORDS.iter().map(|w| w.to_string()).collect();
        words.extend(extra_words.iter().map(|w| w.to_ascii_lowercase()));
        let mut parameters = words.clone();
        parameters.extend(PARAMETER_WORDS.iter().map(|w| w.to_string()));
        Templater {
            hash,
            words,
            parameters,
            positions: HashMap::new(),
        }
    }

    /// A value that is neither a route word nor an identifier, at `position`: `{h:…}` (its
    /// keyed hash) while the position has held at most [`MAX_LITERALS`] values, then
    /// `parameter` for good, the values counted in `ids`.
    fn literal(
        &mut self,
        position: String,
        value: &str,
        parameter: &str,
        ids: &mut Vec<u64>,
    ) -> String {
        let h = (self.hash)(value);
        if self.positions.len() >= MAX_POSITIONS {
            self.positions.clear();
        }
        let pos = self.positions.entry(position).or_default();
        if !pos.parameter && !pos.values.contains(&h) && pos.values.len() >= MAX_LITERALS {
            pos.parameter = true;
            pos.values.clear();
        }
        if pos.parameter {
            ids.push(h);
            parameter.to_string()
        } else {
            pos.values.insert(h);
            format!("{{h:{:08x}}}", h >> 32)
        }
    }

    /// The template of a query string's parameter names (sorted, without duplicates), after
    /// the path's template `at`; values are never kept, identifiers among them are counted.
    fn query_names(&mut self, at: String, query: &str, ids: &mut Vec<u64>) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            // A bare `?dupont` is a name as much as `?dupont=1`.
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = percent_decode(k);
            let lower = k.to_ascii_lowercase();
            let key = if self.parameters.contains(&lower) {
                lower
            } else {
                match classify(&k) {
                    Class::Word => self.literal(at.clone(), &k, "{k}", ids),
                    class => {
                        ids.push((self.hash)(&k));
                        placeholder(class).to_string()
                    }
                }
            };
            keys.push(key);
            let v = percent_decode(v);
            if !v.is_empty() && classify(&v) != Class::Word {
                ids.push((self.hash)(&v));
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }

    /// The template of a request.
    pub fn template(&mut self, r: &Request) -> Template {
        let target = r.target.split('#').next().unwrap_or("");
        // An absolute-form target (through a proxy) names its host.
        let (target, host_in_target) = match target.split_once("://") {
            Some((_, rest)) => match rest.find('/') {
                Some(i) => (&rest[i..], Some(&rest[..i])),
                None => ("/", Some(rest)),
            },
            None => (target, None),
        };
        let host = host_in_target
            .unwrap_or(r.host)
            .trim_end_matches(":443")
            .to_ascii_lowercase();
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut ids = Vec::new();
        let mut out = String::new();
        let route = format!("{} {host}", r.method);
        for seg in path.split('/').skip(1) {
            out.push('/');
            if seg.is_empty() {
                continue;
            }
            let value = percent_decode(seg);
            if self.words.contains(&value.to_ascii_lowercase()) {
                out.push_str(&value.to_ascii_lowercase());
                continue;
            }
            let class = classify(&value);
            if class != Class::Word {
                ids.push((self.hash)(&value));
                out.push_str(placeholder(class));
                continue;
            }
            let literal = self.literal(format!("{route}{out}"), &value, "{p}", &mut ids);
            out.push_str(&literal);
        }
        if out.is_empty() {
            out.push('/');
        }
        let keys = self.query_names(format!("{route}{out}?"), query, &mut ids);
        if !keys.is_empty() {
            out.push('?');
            out.push_str(&keys.join("&"));
        }
        Template {
            method: r.method.to_string(),
            host,
            path: out,
            ids,
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn templater() -> Templater {
        Templater::new(
            Box::new(|s: &str| {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                s.hash(&mut h);
                h.finish()
            }),
            &["dossiers".to_string()],
        )
    }

    fn req(target: &str) -> Request<'_> {
        Request {
            method: "GET",
            target,
            host: "API.Vendor.example:443",
        }
    }

    #[test]
    fn requests_parse_from_the_captured_start() {
        let w = b"GET /api/v1/patients/123?x=1 HTTP/1.1\r\nUser-Agent: a\r\nHost: api.vendor.example\r\nAccept: */*\r\n\r\n";
        assert_eq!(
            parse(w),
            Write::Http1(Request {
                method: "GET",
                target: "/api/v1/patients/123?x=1",
                host: "api.vendor.example"
            })
        );
        // Cut before the Host header: no host, still a request.
        assert!(matches!(
            parse(b"POST /x HTTP/1.1\r\nHo"),
            Write::Http1(Request { host: "", .. })
        ));
        assert_eq!(parse(b"{\"name\": \"x\"}"), Write::Other);
        assert_eq!(
            parse(b"GET /x\r\n"),
            Write::Other,
            "HTTP/0.9 is not counted"
        );
        assert_eq!(parse(b""), Write::Other);
        // HTTP/2: the preface, SETTINGS, then two HEADERS frames on streams 1 and 3.
        let mut h2 = H2_PREFACE.to_vec();
        h2.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        for stream in [1u8, 3] {
            h2.extend_from_slice(&[0, 0, 3, 1, 4, 0, 0, 0, stream, 0x82, 0x86, 0x84]);
        }
        assert_eq!(parse(&h2), Write::Http2 { requests: 2 });
        // A DATA frame alone: HTTP/2, no request.
        assert_eq!(
            parse(&[0, 0, 2, 0, 1, 0, 0, 0, 1, b'h', b'i']),
            Write::Http2 { requests: 0 }
        );
    }

    #[test]
    fn identifiers_become_placeholders_and_are_counted() {
        let mut t = templater();
        let a = t.template(&req(
            "/api/v1/patients/123456/documents/0b6f3a52-1c1e-4b7e-9a51-3d2c9b0f7e11?include=notes&id=AB12CD34&page=2",
        ));
        assert_eq!(a.host, "api.vendor.example");
        assert_eq!(
            a.path,
            "/api/v1/patients/{n}/documents/{uuid}?id&include&page"
        );
        assert_eq!(a.ids.len(), 4, "123456, the uuid, AB12CD34, 2");
        let b = t.template(&req("/api/v1/patients/654321/documents/0b6f3a52-1c1e-4b7e-9a51-3d2c9b0f7e12?page=3&include=notes&id=ZZ99"));
        assert_eq!(a.path, b.path, "one template for both records");
        assert_ne!(a.ids[0], b.ids[0]);
        assert_eq!(
            t.template(&req(
                "/dossiers/2024-03-01/jean.dupont@example.org/deadbeefcafe1234"
            ))
            .path,
            "/dossiers/{date}/{email}/{hex}"
        );
        assert_eq!(t.template(&req("/")).path, "/");
        assert_eq!(
            t.template(&req("http://proxy.example/v2/x1y2z3w4")).path,
            "/v2/{id}"
        );
    }

    #[test]
    fn a_position_with_many_values_becomes_a_parameter_and_names_never_show() {
        let mut t = templater();
        let names = [
            "dupont", "Martin", "BERNARD", "petit", "durand", "leroy", "moreau", "simon",
            "laurent", "lefebvre",
        ];
        let mut paths = Vec::new();
        for n in names {
            let got = t.template(&req(&format!("/api/search/{n}/results")));
            assert!(
                !got.path.to_lowercase().contains(&n.to_lowercase()),
                "{}",
                got.path
            );
            paths.push(got.path);
        }
        // The first eight are hashed apart; from the ninth the position is a parameter.
        assert!(paths[0].starts_with("/api/search/{h:"), "{}", paths[0]);
        assert_ne!(paths[0], paths[1]);
        assert_eq!(paths[8], "/api/search/{p}/results");
        assert_eq!(
            t.template(&req("/api/search/dupont/results")).path,
            paths[8]
        );
        // Query values never appear; odd parameter names are hidden too.
        let q = t.template(&req("/api/search?nom=DUPONT&prenom=Jean&dupont%20jean=oui"));
        assert!(
            q.path.starts_with("/api/search?nom&prenom&{h:"),
            "{}",
            q.path
        );
        assert!(!q.path.to_lowercase().contains("dupont"), "{}", q.path);
        assert!(q.ids.is_empty(), "names are not identifiers");
    }

    #[test]
    fn query_parameter_names_outside_the_word_lists_are_hashed() {
        let mut t = templater();
        let bare = t.template(&req("/api/patients?dupont"));
        assert!(bare.path.starts_with("/api/patients?{h:"), "{}", bare.path);
        let named = t.template(&req("/api/patients?name=dupont&page=2"));
        assert_eq!(named.path, "/api/patients?name&page");
        assert_eq!(named.ids.len(), 1, "the page number, not the name");
        for p in [&bare.path, &named.path] {
            assert!(!p.to_lowercase().contains("dupont"), "{p}");
        }
        // The same name, the same hash; a word of the configuration is kept.
        assert_eq!(t.template(&req("/api/patients?dupont")).path, bare.path);
        assert_eq!(
            t.template(&req("/api/patients?Dossiers&PAGE=1")).path,
            "/api/patients?dossiers&page"
        );
        // Past `MAX_LITERALS` different names at one route, they are one parameter, counted.
        let names = [
            "martin", "bernard", "petit", "durand", "leroy", "moreau", "simon", "laurent",
        ];
        for n in names {
            t.template(&req(&format!("/api/patients?{n}")));
        }
        let past = t.template(&req("/api/patients?lefebvre"));
        assert_eq!(past.path, "/api/patients?{k}");
        assert_eq!(past.ids.len(), 1, "the name, for a distinct count");
        // Identifiers as names are placeholders, like path segments.
        let ids = t.template(&req("/api/v1/search?jean.dupont%40example.org&123456"));
        assert_eq!(ids.path, "/api/v1/search?{email}&{n}");
        assert_eq!(ids.ids.len(), 2);
    }
}
