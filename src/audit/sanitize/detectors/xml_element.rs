//! `<password>…</password>`, `<ns:clientSecret>…</ns:clientSecret>`: the text of an XML element whose name is a
//! secret key name (Maven `settings.xml`, SOAP, .NET config). The kind follows the name (`password_kv`, …).

use std::sync::LazyLock;

use regex::Regex;

use super::super::engine::{Cand, Detector, compile, push};
use super::super::keys::{KW_PLAIN, classify_key};
use super::KEYED_PLAIN_KINDS;

static XML: LazyLock<Regex> = LazyLock::new(|| {
    compile(&format!(
        r"(?i)<(?P<tag>(?:[A-Za-z0-9_.-]+:)?[A-Za-z0-9_.-]*(?:{KW_PLAIN})[A-Za-z0-9_.-]*)(?:[ \t][^<>]*)?>(?P<val>[^<]+)</(?P<close>[A-Za-z0-9_.:-]+)[ \t]*>"
    ))
});

fn scan(text: &str, out: &mut Vec<Cand>) {
    for c in XML.captures_iter(text) {
        let (Some(tag), Some(val), Some(close)) = (c.name("tag"), c.name("val"), c.name("close"))
        else {
            continue;
        };
        if tag.as_str() != close.as_str() {
            continue;
        }
        let name = tag.as_str().rsplit(':').next().unwrap_or_default();
        let value = val.as_str().trim();
        let Some(class) = classify_key(name) else {
            continue;
        };
        if class.takes(name, value) {
            let start = val.start() + (val.as_str().len() - val.as_str().trim_start().len());
            push(out, start, start + value.len(), class.plain_kind());
        }
    }
}

pub(crate) const DETECTOR: Detector = Detector {
    name: "xml-element",
    kinds: KEYED_PLAIN_KINDS,
    scan,
    tps: &[
        "<server><id>nexus</id><username>deploy</username><password>«hunter2»</password></server>",
        "<soap:Header><ns:clientSecret>«secret:Zq9xT4mPq2»</ns:clientSecret></soap:Header>",
        "<ApiToken type=\"bearer\">\n  «token:abc123def456»\n</ApiToken>",
    ],
    fps: &[
        "<password>${env.NEXUS_PASSWORD}</password>",
        "<passwordPolicy>strict</passwordPolicy>",
        "<token></token> and <secret/>",
    ],
};
