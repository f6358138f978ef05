//! A ListObjectsV2 page read without the SDK's XML decoder.
//!
//! The SDK decodes a page through a general XML tokenizer and a scoped decoder that builds every
//! field of every object (owner, storage class, checksums...), and at a sweep's scale that was
//! over half of its CPU (BENCHMARKS.md). The sweep needs four fields of each object. [`parse`]
//! reads exactly the documents S3-compatible servers send (a declaration, one
//! `ListBucketResult`, elements without attributes, text with the five entities and character
//! references) and refuses anything else: comments, CDATA, processing instructions, a DOCTYPE,
//! attributes, mixed content, an unknown entity. A refused page is not an error: the caller
//! hands it to the SDK's own deserializer, so an odd document is read (or refused) exactly as
//! before. What it does accept, it reads as the SDK would: `fuzz/fuzz_targets/list_page.rs`
//! checks that on arbitrary bytes, and `tests/it/bucket.rs` on pages captured from moto.
//!
//! Where the SDK validates a field the sweep does not use (`MaxKeys` an integer, an owner's
//! `ID` text), this parser validates it too, so that it never accepts a page the SDK would
//! refuse; the numbers, booleans and dates are parsed by the SDK's own primitives
//! (`aws_smithy_types`).

use crate::model::{ObjectMeta, decode_form};
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{ConfigBag, FrozenLayer, RuntimePlugin};
use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output;
use aws_smithy_runtime_api::client::ser_de::{DeserializeResponse, SharedResponseDeserializer};
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::date_time::{DateTime as SmithyTime, Format};
use aws_smithy_types::primitive::Parse;
use chrono::{DateTime, Utc};
use std::borrow::Cow;
use std::sync::OnceLock;

/// What a sweep takes from one ListObjectsV2 answer, whichever decoder read it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ListPage {
    /// The objects in the page's order, keys decoded (listings ask for URL encoding).
    pub objects: Vec<ObjectMeta>,
    pub is_truncated: Option<bool>,
    pub next_continuation_token: Option<String>,
}

/// Why [`parse`] did not read a page: outside what it reads (the SDK then decides), or a listed
/// key that does not decode to UTF-8 (the SDK's answer would be refused the same way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Not in the subset this parser reads: what it stopped at.
    Unread(&'static str),
    /// A key whose percent-encoding is not UTF-8, as the server sent it.
    Key(String),
}

/// Deepest element nesting read (root = 1; `ListBucketResult/Contents/Owner/ID` is 4): deeper
/// documents go to the SDK. Bounds the work on a hostile page.
const MAX_DEPTH: usize = 8;

/// Read a ListObjectsV2 answer's body.
pub fn parse(body: &[u8]) -> Result<ListPage, Refused> {
    let text = std::str::from_utf8(body).map_err(|_| Refused::Unread("not UTF-8"))?;
    check_chars(text)?;
    let mut reader = Reader {
        text,
        pos: 0,
        depth: 0,
        empty: false,
    };
    reader.prolog()?;
    let mut page = ListPage::default();
    if reader.root()? {
        while let Some(name) = reader.child(ROOT)? {
            match name {
                "Contents" => page.objects.push(reader.object()?),
                "IsTruncated" => page.is_truncated = Some(boolean(&reader.leaf(name)?)?),
                "NextContinuationToken" => {
                    page.next_continuation_token = Some(reader.leaf(name)?.into_owned());
                }
                "MaxKeys" | "KeyCount" => {
                    integer::<i32>(&reader.leaf(name)?)?;
                }
                "Name" | "Prefix" | "ContinuationToken" | "StartAfter" | "Delimiter"
                | "EncodingType" => {
                    reader.leaf(name)?;
                }
                "CommonPrefixes" => reader.fields(name, |reader, field| match field {
                    "Prefix" => reader.leaf(field).map(drop),
                    _ => reader.skip(field),
                })?,
                _ => reader.skip(name)?,
            }
        }
    }
    reader.epilog()?;
    Ok(page)
}

/// The characters XML 1.0 refuses (C0 controls but tab and line feed, U+FFFE, U+FFFF; a `str`
/// holds no surrogates), and carriage returns, which XML would turn into line feeds.
fn check_chars(text: &str) -> Result<(), Refused> {
    // A fold without an early exit: the compiler vectorizes it (a page is ~200 KB, and a byte
    // loop with a branch each was 15% of a sweep's instructions).
    let control = text.bytes().fold(false, |found, b| {
        found | ((b < 0x20) & (b != b'\t') & (b != b'\n'))
    });
    // One memchr pass each (on the character's last byte).
    if control || text.contains('\u{FFFE}') || text.contains('\u{FFFF}') {
        return Err(Refused::Unread("a character XML does not allow"));
    }
    Ok(())
}

/// A cursor over the document, and how deep it is.
struct Reader<'a> {
    text: &'a str,
    pos: usize,
    depth: usize,
    /// The element just opened was written empty (`<A/>`).
    empty: bool,
}

/// The declarations the servers send (AWS, moto, garage), and nothing else.
const DECLARATIONS: [&str; 2] = [
    r#"<?xml version="1.0" encoding="UTF-8"?>"#,
    r#"<?xml version="1.0" encoding="utf-8"?>"#,
];
const ROOT: &str = "ListBucketResult";
/// The root's one attribute, as S3 writes it.
const XMLNS: &str = r#" xmlns="http://s3.amazonaws.com/doc/2006-03-01/""#;

impl<'a> Reader<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn eat(&mut self, literal: &str) -> bool {
        let found = self.rest().starts_with(literal);
        if found {
            self.pos += literal.len();
        }
        found
    }

    fn skip_space(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start_matches([' ', '\t', '\n']).len();
    }

    /// An optional declaration, then space.
    fn prolog(&mut self) -> Result<(), Refused> {
        if self.rest().starts_with("<?") && !DECLARATIONS.iter().any(|d| self.eat(d)) {
            return Err(Refused::Unread("an XML declaration of another form"));
        }
        self.skip_space();
        Ok(())
    }

    /// The root's start tag; `false` when it is empty (`<ListBucketResult/>`).
    fn root(&mut self) -> Result<bool, Refused> {
        if !self.eat("<") || !self.eat(ROOT) {
            return Err(Refused::Unread("no ListBucketResult root"));
        }
        self.eat(XMLNS);
        self.depth = 1;
        if self.eat("/>") {
            self.depth = 0;
            return Ok(false);
        }
        if !self.eat(">") {
            return Err(Refused::Unread("the root's start tag"));
        }
        Ok(true)
    }

    /// Nothing but space after the root.
    fn epilog(&mut self) -> Result<(), Refused> {
        self.skip_space();
        if self.pos == self.text.len() {
            Ok(())
        } else {
            Err(Refused::Unread("content after the root"))
        }
    }

    /// The next child element's name (its start tag read; an empty one, `<A/>`, is told by
    /// [`closed_empty`](Self::closed_empty)), or `None` at the end tag of `parent`
    /// (consumed). Only space may stand between children.
    fn child(&mut self, parent: &str) -> Result<Option<&'a str>, Refused> {
        self.skip_space();
        if self.rest().starts_with("</") {
            self.end(parent)?;
            return Ok(None);
        }
        if !self.eat("<") {
            return Err(Refused::Unread("text between elements"));
        }
        let name = self.name()?;
        if self.depth >= MAX_DEPTH {
            return Err(Refused::Unread("elements nested too deep"));
        }
        self.depth += 1;
        // `/>` only right after the name: the same two bytes in the text are text.
        self.empty = self.eat("/>");
        if self.empty || self.eat(">") {
            Ok(Some(name))
        } else {
            Err(Refused::Unread("a start tag with attributes"))
        }
    }

    /// A tag name: ASCII letters only (every name S3 uses).
    fn name(&mut self) -> Result<&'a str, Refused> {
        let rest = self.rest();
        let len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        if len == 0 {
            return Err(Refused::Unread("a tag name"));
        }
        self.pos += len;
        Ok(&rest[..len])
    }

    /// Whether the element just opened by [`child`](Self::child) was written empty (`<A/>`);
    /// consumes the `/>`.
    fn closed_empty(&mut self) -> bool {
        let empty = std::mem::take(&mut self.empty);
        if empty {
            self.depth -= 1;
        }
        empty
    }

    /// Check that the end tag closing `name` follows.
    fn end(&mut self, name: &str) -> Result<(), Refused> {
        if self.eat("</") && self.eat(name) && self.eat(">") {
            self.depth -= 1;
            Ok(())
        } else {
            Err(Refused::Unread("a mismatched or missing end tag"))
        }
    }

    /// The text of the element `name` just opened, unescaped, its end tag read: what the SDK's
    /// `try_data` gives for an element holding text alone.
    fn leaf(&mut self, name: &str) -> Result<Cow<'a, str>, Refused> {
        if self.closed_empty() {
            return Ok(Cow::Borrowed(""));
        }
        let rest = self.rest();
        let len = rest.find('<').unwrap_or(rest.len());
        let raw = &rest[..len];
        self.pos += len;
        self.end(name)?;
        unescape(raw)
    }

    /// Read the children of the element `name` just opened, each by `field`, and its end tag;
    /// text between them may only be space.
    fn fields(
        &mut self,
        name: &str,
        mut field: impl FnMut(&mut Self, &'a str) -> Result<(), Refused>,
    ) -> Result<(), Refused> {
        if self.closed_empty() {
            return Ok(());
        }
        while let Some(child) = self.child(name)? {
            field(self, child)?;
        }
        Ok(())
    }

    /// An element the sweep does not read: checked as well-formed (texts unescaped, children
    /// closed by their own names) and skipped.
    fn skip(&mut self, name: &str) -> Result<(), Refused> {
        if self.closed_empty() {
            return Ok(());
        }
        self.skip_space();
        if self.rest().starts_with('<') && !self.rest().starts_with("</") {
            return self.fields(name, |reader, child| reader.skip(child));
        }
        // Text (possibly empty): a leaf.
        self.leaf(name).map(drop)
    }

    /// One `Contents` element.
    fn object(&mut self) -> Result<ObjectMeta, Refused> {
        let (mut key, mut size, mut etag, mut modified) = (None, None, None, None);
        self.fields("Contents", |reader, field| {
            match field {
                "Key" => key = Some(reader.leaf(field)?),
                "Size" => size = Some(integer::<i64>(&reader.leaf(field)?)?),
                "ETag" => etag = Some(reader.leaf(field)?.into_owned()),
                "LastModified" => modified = Some(time(&reader.leaf(field)?)?),
                "ChecksumAlgorithm" | "ChecksumType" | "StorageClass" => {
                    reader.leaf(field)?;
                }
                "Owner" => reader.fields(field, |reader, field| match field {
                    "DisplayName" | "ID" => reader.leaf(field).map(drop),
                    _ => reader.skip(field),
                })?,
                "RestoreStatus" => reader.fields(field, |reader, field| match field {
                    "IsRestoreInProgress" => boolean(&reader.leaf(field)?).map(drop),
                    "RestoreExpiryDate" => time(&reader.leaf(field)?).map(drop),
                    _ => reader.skip(field),
                })?,
                _ => reader.skip(field)?,
            }
            Ok(())
        })?;
        let raw = key.unwrap_or_default();
        object(&raw, size, etag, modified).ok_or_else(|| Refused::Key(raw.into_owned()))
    }
}

/// The sweep's view of a listed object, from the fields as either decoder read them: the key
/// decoded, no size read as 0, no time as never old (it stays in grace).
pub fn object(
    raw_key: &str,
    size: Option<i64>,
    etag: Option<String>,
    last_modified: Option<SmithyTime>,
) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        key: decode_form(raw_key)?,
        size: size.unwrap_or(0),
        etag,
        last_modified: to_chrono(last_modified.as_ref()),
        linked: false,
    })
}

/// An object without a modification time cannot be judged old: it stays in grace.
pub fn to_chrono(time: Option<&SmithyTime>) -> DateTime<Utc> {
    time.and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn boolean(text: &str) -> Result<bool, Refused> {
    bool::parse_smithy_primitive(text).map_err(|_| Refused::Unread("a boolean"))
}

fn integer<T: Parse>(text: &str) -> Result<T, Refused> {
    T::parse_smithy_primitive(text).map_err(|_| Refused::Unread("an integer"))
}

/// A timestamp as the SDK reads ListObjectsV2's (RFC 3339, an offset allowed).
fn time(text: &str) -> Result<SmithyTime, Refused> {
    SmithyTime::from_str(text, Format::DateTimeWithOffset).map_err(|_| Refused::Unread("a date"))
}

/// Text with XML's five entities and character references (`&#65;`, `&#x41;`) replaced; any
/// other `&` is refused, and so is a reference to a character XML does not allow.
fn unescape(raw: &str) -> Result<Cow<'_, str>, Refused> {
    if raw.as_bytes().contains(&b'>') && raw.contains("]]>") {
        return Err(Refused::Unread("]]> in text"));
    }
    let Some(first) = raw.find('&') else {
        return Ok(Cow::Borrowed(raw));
    };
    let mut out = String::with_capacity(raw.len());
    out.push_str(&raw[..first]);
    let mut rest = &raw[first..];
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let end = after
            .find(';')
            .ok_or(Refused::Unread("an unterminated reference"))?;
        out.push(reference(&after[..end])?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Cow::Owned(out))
}

/// The character an entity or character reference (between `&` and `;`) stands for.
fn reference(entity: &str) -> Result<char, Refused> {
    let refused = Refused::Unread("a reference");
    let (digits, radix) = match entity {
        "lt" => return Ok('<'),
        "gt" => return Ok('>'),
        "amp" => return Ok('&'),
        "quot" => return Ok('"'),
        "apos" => return Ok('\''),
        _ => match entity.strip_prefix("#x") {
            Some(hex) if hex.bytes().all(|b| b.is_ascii_hexdigit()) => (hex, 16),
            Some(_) => return Err(refused),
            None => match entity.strip_prefix('#') {
                Some(dec) if dec.bytes().all(|b| b.is_ascii_digit()) => (dec, 10),
                _ => return Err(refused),
            },
        },
    };
    let code = u32::from_str_radix(digits, radix).map_err(|_| refused.clone())?;
    if !matches!(code, 0x9 | 0xA | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF) {
        return Err(refused);
    }
    char::from_u32(code).ok_or(refused)
}

// The SDK's side: its own decoder of the same page, with no request made. The sweep falls back
// on it ([`super::s3`]), and the tests and `fuzz/fuzz_targets/list_page.rs` hold [`parse`] to it.

/// The SDK's own ListObjectsV2 deserializer, from the operation's configuration (a stateless
/// value: the one the operation would have used).
pub fn sdk_deserializer() -> Option<&'static SharedResponseDeserializer> {
    static OPERATION: OnceLock<Option<FrozenLayer>> = OnceLock::new();
    OPERATION
        .get_or_init(|| aws_sdk_s3::operation::list_objects_v2::ListObjectsV2::new().config())
        .as_ref()?
        .load::<SharedResponseDeserializer>()
}

/// The page as the SDK decoded it; `Err` with a key (as sent) that does not decode to UTF-8.
pub fn sdk_page(out: &ListObjectsV2Output) -> std::result::Result<ListPage, String> {
    let objects = out
        .contents()
        .iter()
        .map(|o| {
            let raw = o.key().unwrap_or_default();
            object(
                raw,
                o.size(),
                o.e_tag().map(str::to_owned),
                o.last_modified().copied(),
            )
            .ok_or_else(|| raw.to_owned())
        })
        .collect::<std::result::Result<_, _>>()?;
    Ok(ListPage {
        objects,
        is_truncated: out.is_truncated(),
        next_continuation_token: out.next_continuation_token().map(str::to_owned),
    })
}

/// A ListObjectsV2 body decoded by the SDK's own deserializer, no request made: what the lean
/// parser must agree with (the conformance tests and `fuzz/fuzz_targets/list_page.rs`). `Err`
/// when the SDK refuses it or a key does not decode.
pub fn sdk_decode(body: &[u8]) -> std::result::Result<ListPage, String> {
    use aws_smithy_types::body::SdkBody;
    let sdk = sdk_deserializer().ok_or("ListObjectsV2 has no response deserializer")?;
    let cfg = ConfigBag::base();
    let response = HttpResponse::new(
        StatusCode::try_from(200).map_err(|e| e.to_string())?,
        SdkBody::from(body.to_vec()),
    );
    let output = sdk
        .deserialize_nonstreaming_with_config(&response, &cfg)
        .map_err(|e| format!("{e:?}"))?;
    let out = output
        .downcast::<ListObjectsV2Output>()
        .map_err(|_| "not a ListObjectsV2 output".to_string())?;
    sdk_page(&out).map_err(|key| undecodable(&key))
}

pub fn undecodable(raw: &str) -> String {
    format!("key {raw:?} does not decode to UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's example answer (S3 API reference, ListObjectsV2), with URL-encoded keys and a
    /// continuation token, as AWS writes it: declaration, namespace, owner, storage class.
    const AWS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
    <Name>bucket</Name>
    <Prefix>docs/</Prefix>
    <NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>
    <KeyCount>3</KeyCount>
    <MaxKeys>3</MaxKeys>
    <EncodingType>url</EncodingType>
    <IsTruncated>true</IsTruncated>
    <Contents>
        <Key>docs/a+b%2Bc</Key>
        <LastModified>2014-11-21T19:40:05.000Z</LastModified>
        <ETag>&quot;70ee1738b6b21e2c8a43f3a5ab0eee71&quot;</ETag>
        <ChecksumAlgorithm>CRC32</ChecksumAlgorithm>
        <Size>11</Size>
        <Owner><ID>75aa57f09aa0c8caeab4f8c24e99d10f8e7faeebf76c078efc7c6caea54ba06a</ID><DisplayName>me</DisplayName></Owner>
        <StorageClass>STANDARD</StorageClass>
    </Contents>
    <Contents>
        <Key>docs/ctl%01x</Key>
        <LastModified>2026-11-25T23:44:28.931Z</LastModified>
        <ETag>"9c8af9a76df052144598c115ef33e511-2"</ETag>
        <Size>4</Size>
        <RestoreStatus><IsRestoreInProgress>false</IsRestoreInProgress><RestoreExpiryDate>2012-12-21T00:00:00.000Z</RestoreExpiryDate></RestoreStatus>
        <StorageClass>STANDARD</StorageClass>
    </Contents>
    <Contents>
        <Key>docs/%C3%A9t%C3%A9 &amp; &#x41;&#66;</Key>
        <Size>0</Size>
    </Contents>
    <CommonPrefixes><Prefix>docs/x/</Prefix></CommonPrefixes>
</ListBucketResult>"#;

    fn lean(xml: &str) -> Result<ListPage, Refused> {
        parse(xml.as_bytes())
    }

    #[test]
    fn an_aws_page_reads_as_the_sdk_reads_it() {
        let page = lean(AWS).expect("read");
        assert_eq!(sdk_decode(AWS.as_bytes()).as_ref(), Ok(&page));
        let keys: Vec<&str> = page.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["docs/a b+c", "docs/ctl\u{1}x", "docs/été & AB"]);
        assert_eq!(page.is_truncated, Some(true));
        assert_eq!(
            page.next_continuation_token.as_deref(),
            Some("1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=")
        );
        let first = &page.objects[0];
        assert_eq!(
            first.etag.as_deref(),
            Some("\"70ee1738b6b21e2c8a43f3a5ab0eee71\"")
        );
        assert_eq!((first.size, page.objects[1].size), (11, 4));
        assert_eq!(
            page.objects[1].last_modified.to_rfc3339(),
            "2026-11-25T23:44:28.931+00:00"
        );
        // No time: never old.
        assert_eq!(page.objects[2].last_modified, DateTime::<Utc>::MAX_UTC);
    }

    #[test]
    fn pages_without_declaration_namespace_or_objects_read_too() {
        for xml in [
            "<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>",
            "<ListBucketResult/>",
            "<ListBucketResult><Name>b</Name><Prefix/><KeyCount>0</KeyCount></ListBucketResult>\n",
            "<ListBucketResult><Contents><Key>k</Key><Size>1</Size><Unknown><A>x</A><B/></Unknown></Contents></ListBucketResult>",
        ] {
            let page = lean(xml).unwrap_or_else(|e| panic!("{xml}: {e:?}"));
            assert_eq!(sdk_decode(xml.as_bytes()), Ok(page), "{xml}");
        }
    }

    #[test]
    fn what_the_parser_does_not_read_is_left_to_the_sdk() {
        let refused = [
            ("comment", "<ListBucketResult><!-- c --></ListBucketResult>"),
            (
                "cdata",
                "<ListBucketResult><Contents><Key><![CDATA[k]]></Key></Contents></ListBucketResult>",
            ),
            (
                "attribute",
                r#"<ListBucketResult><Contents a="1"><Key>k</Key></Contents></ListBucketResult>"#,
            ),
            (
                "mismatched end",
                "<ListBucketResult><Contents><Key>k</Size></Contents></ListBucketResult>",
            ),
            ("unclosed", "<ListBucketResult><Contents><Key>k</Key>"),
            (
                "control character",
                "<ListBucketResult><Name>a\u{1}b</Name></ListBucketResult>",
            ),
            (
                "carriage return",
                "<ListBucketResult><Name>a\r\nb</Name></ListBucketResult>",
            ),
            (
                "noncharacter",
                "<ListBucketResult><Name>a\u{FFFE}</Name></ListBucketResult>",
            ),
            (
                "unknown entity",
                "<ListBucketResult><Name>&nbsp;</Name></ListBucketResult>",
            ),
            (
                "reference to NUL",
                "<ListBucketResult><Name>&#0;</Name></ListBucketResult>",
            ),
            (
                "upper-case hex",
                "<ListBucketResult><Name>&#X41;</Name></ListBucketResult>",
            ),
            ("error document", "<Error><Code>SlowDown</Code></Error>"),
            ("trailing content", "<ListBucketResult/><ListBucketResult/>"),
            ("doctype", "<!DOCTYPE x><ListBucketResult/>"),
            (
                "other declaration",
                r#"<?xml version="1.1"?><ListBucketResult/>"#,
            ),
            (
                "mixed content",
                "<ListBucketResult><Contents>x<Key>k</Key></Contents></ListBucketResult>",
            ),
            (
                "namespace prefix",
                "<ListBucketResult><s3:Name>b</s3:Name></ListBucketResult>",
            ),
            (
                "bad size",
                "<ListBucketResult><Contents><Size>1.5</Size></Contents></ListBucketResult>",
            ),
            (
                "bad date",
                "<ListBucketResult><Contents><LastModified>yesterday</LastModified></Contents></ListBucketResult>",
            ),
            (
                "bad boolean",
                "<ListBucketResult><IsTruncated>yes</IsTruncated></ListBucketResult>",
            ),
            (
                "bad owner",
                "<ListBucketResult><Contents><Owner><ID><x/></ID></Owner></Contents></ListBucketResult>",
            ),
            (
                "bad max keys",
                "<ListBucketResult><MaxKeys>-</MaxKeys></ListBucketResult>",
            ),
        ];
        for (what, xml) in refused {
            assert!(
                matches!(lean(xml), Err(Refused::Unread(_))),
                "{what}: {:?}",
                lean(xml)
            );
        }
        // Found by the fuzz target: `/>` in an unknown element's text is no empty element.
        let text =
            "<ListBucketResult><Presix>\n/><IsTruncated>false</IsTruncated></ListBucketResult>";
        assert!(lean(text).is_err(), "{:?}", lean(text));
        let deep = format!(
            "<ListBucketResult>{}{}</ListBucketResult>",
            "<A>".repeat(20),
            "</A>".repeat(20)
        );
        assert!(lean(&deep).is_err());
        assert!(parse(b"<ListBucketResult>\xff</ListBucketResult>").is_err());
    }

    #[test]
    fn a_key_that_does_not_decode_is_named() {
        let xml = "<ListBucketResult><Contents><Key>bad%FF</Key></Contents></ListBucketResult>";
        assert_eq!(lean(xml), Err(Refused::Key("bad%FF".into())));
        assert!(sdk_decode(xml.as_bytes()).is_err());
    }
}
