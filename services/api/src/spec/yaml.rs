//! The YAML document under `raw`: granit-parser (serde-saphyr's pure-Rust
//! YAML 1.2 parser) reads the text into a tree of nodes that keep their
//! position, and the `Deserializer` below reads the raw structs out of it.
//!
//! The tree sits in between for three reasons: syntax errors and duplicate
//! keys anywhere in the file are reported before a type error (a streaming
//! typed decode stops at the first mismatch), a type error at `tasks[1]` can
//! be labelled with that task's name, and the errors are ours to word:
//! serde's own `invalid type: sequence, expected a string` with the path and
//! the node's line and column. It is built from the parser's events, not
//! through serde-saphyr's `Spanned<T>`, whose serde round trip per node
//! would dominate the parse of a large spec.
//!
//! A plain scalar keeps its text as written (`0.5`, `1.50`, `true`, `0777`
//! all reach a string field unchanged); only a bool field reads `true` /
//! `false` (YAML 1.2 core schema: `yes`, `no`, `on`, `off` are strings), and
//! `<<` is an ordinary key (merge keys are YAML 1.1).

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Unexpected, Visitor};
use serde_saphyr::granit_parser::{Event, Marker, Parser, ScalarStyle, ScanError, Tag};

/// Collections nested deeper than this are refused (a spec needs six):
/// reading, sizing and dropping the tree recurse.
const MAX_DEPTH: usize = 128;

/// Where a node starts, 1-based.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    fn of(marker: &Marker) -> Pos {
        Pos {
            line: u32::try_from(marker.line()).unwrap_or(u32::MAX),
            column: u32::try_from(marker.col().saturating_add(1)).unwrap_or(u32::MAX),
        }
    }

    /// ` at line L column C`, or nothing at the very start of the file,
    /// where it would add nothing.
    fn suffix(at: Option<Pos>) -> String {
        match at {
            Some(at) if at != (Pos { line: 1, column: 1 }) => {
                format!(" at line {} column {}", at.line, at.column)
            }
            _ => String::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub at: Pos,
    pub value: Value,
}

#[derive(Clone, Debug)]
pub(crate) enum Value {
    /// A scalar's text: as written when plain, after unquoting otherwise.
    Scalar(Kind, String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// What a scalar reads as under the YAML 1.2 core schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Null,
    Bool(bool),
    Number,
    String,
}

impl Node {
    /// A scalar's text; `None` for a sequence or a mapping.
    pub fn text(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(_, text) => Some(text),
            Value::Seq(_) | Value::Map(_) => None,
        }
    }

    /// The value under the string key `key` of a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(&k.value, Value::Scalar(Kind::String, s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Reads `T` out of this node; an error says where (the innermost node
    /// it is about) and the path to it.
    pub fn deserialize<'de, T: serde::Deserialize<'de>>(&self) -> Result<T, Error> {
        T::deserialize(De { node: self }).map_err(|e| e.or_at(self.at))
    }

    fn is_null(&self) -> bool {
        matches!(self.value, Value::Scalar(Kind::Null, _))
    }
}

/// Parses `src` into its root node (`None` for an empty document, only
/// comments, or `~`). A syntax error, a second document or a duplicate key
/// is the `Err`, worded for the user with its line and column.
pub(crate) fn parse(src: &str) -> Result<Option<Node>, String> {
    let mut builder = Builder {
        open: Vec::new(),
        anchors: HashMap::new(),
        nodes: 0,
        // Aliases may repeat a subtree; this bounds what they can expand to.
        max_nodes: src.len().saturating_mul(2).max(100_000),
        root: None,
        documents: 0,
    };
    for event in Parser::new_from_str(src) {
        let (event, span) = event.map_err(|e| scan_message(&e))?;
        builder.event(event, Pos::of(&span.start))?;
    }
    Ok(builder.root.filter(|root| !root.is_null()))
}

fn scan_message(error: &ScanError) -> String {
    format!(
        "{}{}",
        error.info(),
        Pos::suffix(Some(Pos::of(error.marker())))
    )
}

/// A collection whose end has not come yet.
struct Open {
    at: Pos,
    anchor: usize,
    value: Value,
    /// A mapping's key waiting for its value.
    key: Option<Node>,
}

struct Builder {
    open: Vec<Open>,
    /// Anchored nodes and how many nodes each holds.
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
    max_nodes: usize,
    root: Option<Node>,
    documents: usize,
}

impl Builder {
    fn event(&mut self, event: Event<'_>, at: Pos) -> Result<(), String> {
        let node = match event {
            Event::DocumentStart(..) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(format!(
                        "a second document (a spec is one YAML document){}",
                        Pos::suffix(Some(at))
                    ));
                }
                return Ok(());
            }
            Event::Scalar(text, style, anchor, tag) => {
                let kind = resolve(&text, style, tag.as_deref());
                let node = Node {
                    at,
                    value: Value::Scalar(kind, text.into_owned()),
                };
                self.count(1, at)?;
                self.remember(anchor, &node, 1);
                node
            }
            Event::SequenceStart(_, anchor, _) => {
                return self.start(at, anchor, Value::Seq(Vec::new()))
            }
            Event::MappingStart(_, anchor, _) => {
                return self.start(at, anchor, Value::Map(Vec::new()))
            }
            Event::SequenceEnd | Event::MappingEnd => self.end()?,
            Event::Alias(id) => {
                let Some((node, size)) = self.anchors.get(&id) else {
                    return Err(format!("unknown anchor{}", Pos::suffix(Some(at))));
                };
                let (mut node, size) = (node.clone(), *size);
                self.count(size, at)?;
                node.at = at;
                node
            }
            _ => return Ok(()),
        };
        self.attach(node)
    }

    fn count(&mut self, nodes: usize, at: Pos) -> Result<(), String> {
        self.nodes = self.nodes.saturating_add(nodes);
        if self.nodes > self.max_nodes {
            return Err(format!(
                "aliases expand to more than {} nodes{}",
                self.max_nodes,
                Pos::suffix(Some(at))
            ));
        }
        Ok(())
    }

    fn remember(&mut self, anchor: usize, node: &Node, size: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, (node.clone(), size));
        }
    }

    fn start(&mut self, at: Pos, anchor: usize, value: Value) -> Result<(), String> {
        if self.open.len() >= MAX_DEPTH {
            return Err(format!(
                "nested deeper than {MAX_DEPTH} levels{}",
                Pos::suffix(Some(at))
            ));
        }
        self.count(1, at)?;
        self.open.push(Open {
            at,
            anchor,
            value,
            key: None,
        });
        Ok(())
    }

    /// Closes the innermost collection, refusing a mapping with a key twice.
    fn end(&mut self) -> Result<Node, String> {
        let Some(open) = self.open.pop() else {
            return Err("a collection ends that never started".to_owned());
        };
        if let Value::Map(entries) = &open.value {
            if let Some(key) = duplicate(entries) {
                return Err(format!(
                    "{}duplicate entry {}{}",
                    self.path_prefix(),
                    describe_key(key),
                    Pos::suffix(Some(open.at))
                ));
            }
        }
        let node = Node {
            at: open.at,
            value: open.value,
        };
        if open.anchor != 0 {
            self.remember(open.anchor, &node, size(&node));
        }
        Ok(node)
    }

    /// Puts a finished node into the innermost open collection, or makes it
    /// the root.
    fn attach(&mut self, node: Node) -> Result<(), String> {
        let Some(open) = self.open.last_mut() else {
            self.root = Some(node);
            return Ok(());
        };
        match (&mut open.value, open.key.take()) {
            (Value::Seq(items), _) => items.push(node),
            (Value::Map(entries), Some(key)) => entries.push((key, node)),
            (Value::Map(_), None) => open.key = Some(node),
            (Value::Scalar(..), _) => return Err("a scalar holds a node".to_owned()),
        }
        Ok(())
    }

    /// `<path>: ` of the collection being closed, from the ones still open.
    fn path_prefix(&self) -> String {
        let path: Vec<Segment> = self
            .open
            .iter()
            .map(|open| match (&open.value, &open.key) {
                (Value::Seq(items), _) => Segment::Index(items.len()),
                (_, Some(key)) => Segment::Key(key.text().unwrap_or("?").to_owned()),
                _ => Segment::Key("?".to_owned()),
            })
            .collect();
        if path.is_empty() {
            String::new()
        } else {
            format!("{}: ", render_path(&path))
        }
    }
}

/// How many nodes `node` holds, itself included.
fn size(node: &Node) -> usize {
    match &node.value {
        Value::Scalar(..) => 1,
        Value::Seq(items) => 1 + items.iter().map(size).sum::<usize>(),
        Value::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| size(k) + size(v))
                .sum::<usize>()
        }
    }
}

/// The first key that comes twice: same kind and text (`1` and `"1"`
/// differ); collections as keys never match.
fn duplicate(entries: &[(Node, Node)]) -> Option<&Node> {
    let mut seen = HashSet::with_capacity(entries.len());
    entries
        .iter()
        .map(|(key, _)| key)
        .find(|key| identity(key).is_some_and(|id| !seen.insert(id)))
}

fn identity(key: &Node) -> Option<(Kind, &str)> {
    match &key.value {
        Value::Scalar(kind @ (Kind::Null | Kind::Bool(_)), _) => Some((*kind, "")),
        Value::Scalar(kind, text) => Some((*kind, text.as_str())),
        Value::Seq(_) | Value::Map(_) => None,
    }
}

fn describe_key(key: &Node) -> String {
    match &key.value {
        Value::Scalar(Kind::Null, _) => "with null key".to_owned(),
        Value::Scalar(Kind::Bool(b), _) => format!("with key `{b}`"),
        Value::Scalar(Kind::Number, text) => format!("with key {text}"),
        Value::Scalar(Kind::String, text) => format!("with key {text:?}"),
        Value::Seq(_) | Value::Map(_) => "in a mapping".to_owned(),
    }
}

/// The YAML 1.2 core schema: a plain scalar is null, a bool, a number or a
/// string by its text; a quoted or block one, or one tagged `!!str`, is a
/// string.
fn resolve(text: &str, style: ScalarStyle, tag: Option<&Tag>) -> Kind {
    if style != ScalarStyle::Plain || tag.is_some_and(|t| t.is_yaml_core_schema_tag("str")) {
        return Kind::String;
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => Kind::Null,
        "true" | "True" | "TRUE" => Kind::Bool(true),
        "false" | "False" | "FALSE" => Kind::Bool(false),
        _ if is_number(text) => Kind::Number,
        _ => Kind::String,
    }
}

fn is_number(text: &str) -> bool {
    let digits = |s: &str, radix: u32| !s.is_empty() && s.chars().all(|c| c.is_digit(radix));
    if let Some(hex) = text.strip_prefix("0x") {
        return digits(hex, 16);
    }
    if let Some(octal) = text.strip_prefix("0o") {
        return digits(octal, 8);
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    if matches!(unsigned, ".inf" | ".Inf" | ".INF") || matches!(text, ".nan" | ".NaN" | ".NAN") {
        return true;
    }
    // [0-9]+ | (\.[0-9]+ | [0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e.strip_prefix(['-', '+']).unwrap_or(e))),
        None => (unsigned, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((whole, fraction)) => {
            (whole.is_empty() || digits(whole, 10))
                && (fraction.is_empty() || digits(fraction, 10))
                && !(whole.is_empty() && fraction.is_empty())
        }
        None => digits(mantissa, 10),
    };
    mantissa_ok && exponent.is_none_or(|e| digits(e, 10))
}

/// One step of the path to a node: a mapping key or a sequence index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    Key(String),
    Index(usize),
}

/// A path as `tasks[1].resources`.
pub(crate) fn render_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) if out.is_empty() => out.push_str(key),
            Segment::Key(key) => {
                out.push('.');
                out.push_str(key);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// A decoding error: serde's message, the position of the node it is
/// about, and the path to it.
#[derive(Debug)]
pub(crate) struct Error {
    pub message: String,
    pub at: Option<Pos>,
    pub path: Vec<Segment>,
}

impl Error {
    fn or_at(mut self, at: Pos) -> Self {
        self.at.get_or_insert(at);
        self
    }

    fn within(mut self, segment: Segment) -> Self {
        self.path.insert(0, segment);
        self
    }

    /// ` at line L column C`, or nothing at the very start of the file.
    pub fn location(&self) -> String {
        Pos::suffix(self.at)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", render_path(&self.path))?;
        }
        write!(f, "{}{}", self.message, self.location())
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error {
            message: msg.to_string(),
            at: None,
            path: Vec::new(),
        }
    }
}

/// Reads one node the way a spec's fields want it: any scalar's text goes
/// to a string, `true`/`false` to a bool, a null to `None`.
///
/// Errors without a position get the node's from the caller (`SeqDe`,
/// `MapDe`, `Node::deserialize`), innermost first.
struct De<'n> {
    node: &'n Node,
}

impl<'n> De<'n> {
    fn text(&self) -> Option<&'n str> {
        self.node.text()
    }

    fn unexpected(&self) -> Unexpected<'n> {
        match &self.node.value {
            Value::Scalar(Kind::Null, _) => Unexpected::Unit,
            Value::Scalar(Kind::Bool(b), _) => Unexpected::Bool(*b),
            Value::Scalar(Kind::Number, text) => number(text),
            Value::Scalar(Kind::String, text) => Unexpected::Str(text),
            Value::Seq(_) => Unexpected::Seq,
            Value::Map(_) => Unexpected::Map,
        }
    }

    fn invalid_type(&self, expected: &dyn de::Expected) -> Error {
        de::Error::invalid_type(self.unexpected(), expected)
    }

    fn seq(&self, items: &'n [Node]) -> SeqDe<'n> {
        SeqDe {
            items: items.iter().enumerate(),
        }
    }

    fn map(&self, entries: &'n [(Node, Node)]) -> MapDe<'n> {
        MapDe {
            entries: entries.iter(),
            value: None,
        }
    }
}

fn number(text: &str) -> Unexpected<'_> {
    if let Ok(n) = text.parse::<u64>() {
        Unexpected::Unsigned(n)
    } else if let Ok(n) = text.parse::<i64>() {
        Unexpected::Signed(n)
    } else if let Ok(n) = text.parse::<f64>() {
        Unexpected::Float(n)
    } else {
        Unexpected::Other(text)
    }
}

impl<'de, 'n> Deserializer<'de> for De<'n> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::Scalar(Kind::Null, _) => visitor.visit_unit(),
            Value::Scalar(Kind::Bool(b), _) => visitor.visit_bool(*b),
            Value::Scalar(Kind::Number, text) => match number(text) {
                Unexpected::Unsigned(n) => visitor.visit_u64(n),
                Unexpected::Signed(n) => visitor.visit_i64(n),
                Unexpected::Float(n) => visitor.visit_f64(n),
                _ => visitor.visit_str(text),
            },
            Value::Scalar(Kind::String, text) => visitor.visit_str(text),
            Value::Seq(items) => visitor.visit_seq(self.seq(items)),
            Value::Map(entries) => visitor.visit_map(self.map(entries)),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::Scalar(Kind::Bool(b), _) => visitor.visit_bool(*b),
            _ => Err(self.invalid_type(&visitor)),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.text() {
            Some(text) => visitor.visit_str(text),
            None => Err(self.invalid_type(&visitor)),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::Scalar(Kind::Null, _) => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::Seq(items) => visitor.visit_seq(self.seq(items)),
            _ => Err(self.invalid_type(&visitor)),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::Map(entries) => visitor.visit_map(self.map(entries)),
            _ => Err(self.invalid_type(&visitor)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf
        unit unit_struct tuple tuple_struct enum
    }
}

struct SeqDe<'n> {
    items: std::iter::Enumerate<std::slice::Iter<'n, Node>>,
}

impl<'de, 'n> SeqAccess<'de> for SeqDe<'n> {
    type Error = Error;

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }

    fn next_element_seed<T>(&mut self, seed: T) -> Result<Option<T::Value>, Error>
    where
        T: DeserializeSeed<'de>,
    {
        self.items
            .next()
            .map(|(index, node)| {
                seed.deserialize(De { node })
                    .map_err(|e| e.or_at(node.at).within(Segment::Index(index)))
            })
            .transpose()
    }
}

struct MapDe<'n> {
    entries: std::slice::Iter<'n, (Node, Node)>,
    value: Option<(&'n Node, &'n Node)>,
}

impl<'de, 'n> MapAccess<'de> for MapDe<'n> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some((key, value));
        // A bad key is the mapping's error: no segment for it.
        seed.deserialize(De { node: key })
            .map(Some)
            .map_err(|e| e.or_at(key.at))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let Some((key, value)) = self.value.take() else {
            return Err(de::Error::custom("a value asked for before its key"));
        };
        seed.deserialize(De { node: value }).map_err(|e| {
            e.or_at(value.at)
                .within(Segment::Key(key.text().unwrap_or("?").to_owned()))
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

#[cfg(test)]
mod tests;
