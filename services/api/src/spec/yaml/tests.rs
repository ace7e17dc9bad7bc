use std::collections::BTreeMap;

use serde::Deserialize;

use super::*;

/// Decodes `src` into `T` through the tree.
fn decode<T: for<'de> Deserialize<'de>>(src: &str) -> Result<T, String> {
    let root = parse(src)?.ok_or("empty document")?;
    root.deserialize().map_err(|e| e.to_string())
}

#[test]
fn plain_scalars_reach_strings_as_written() -> Result<(), String> {
    let got: BTreeMap<String, String> = decode(
        "a: 0.5\nb: 1.50\nc: true\nd: 0777\ne: 0x10\nf: 1e999\ng: .nan\nh: ~\ni: yes\nj: '007'\nk: 99999999999999999999999\n",
    )
    ?;
    let want = [
        ("a", "0.5"),
        ("b", "1.50"),
        ("c", "true"),
        ("d", "0777"),
        ("e", "0x10"),
        ("f", "1e999"),
        ("g", ".nan"),
        ("h", "~"),
        ("i", "yes"),
        ("j", "007"),
        ("k", "99999999999999999999999"),
    ];
    assert_eq!(
        got,
        want.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    );
    Ok(())
}

#[test]
fn only_yaml_1_2_booleans_are_booleans() -> Result<(), String> {
    let got: BTreeMap<String, bool> = decode("a: true\nb: False\nc: TRUE\n")?;
    assert_eq!(got.values().collect::<Vec<_>>(), [&true, &false, &true]);
    for word in ["yes", "no", "on", "off", "y", "n"] {
        assert_eq!(
            decode::<BTreeMap<String, bool>>(&format!("a: {word}\n")).unwrap_err(),
            format!("a: invalid type: string \"{word}\", expected a boolean at line 1 column 4")
        );
    }
    assert_eq!(
        decode::<BTreeMap<String, bool>>("a: 1\n").unwrap_err(),
        "a: invalid type: integer `1`, expected a boolean at line 1 column 4"
    );
    Ok(())
}

#[test]
fn a_null_is_none_and_an_empty_document_has_no_root() -> Result<(), String> {
    let got: BTreeMap<String, Option<String>> = decode("a: ~\nb:\nc: null\nd: x\n")?;
    assert_eq!(got["a"], None);
    assert_eq!(got["b"], None);
    assert_eq!(got["c"], None);
    assert_eq!(got["d"].as_deref(), Some("x"));
    for empty in ["", "# only a comment\n", "~\n", "---\n"] {
        assert!(parse(empty)?.is_none(), "{empty:?}");
    }
    Ok(())
}

#[test]
fn errors_carry_the_path_and_the_node_position() {
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        items: Vec<Inner>,
    }
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        tags: BTreeMap<String, String>,
    }
    assert_eq!(
        decode::<Outer>("items:\n  - tags: {a: x}\n  - tags: {b: [y]}\n").unwrap_err(),
        "items[1].tags.b: invalid type: sequence, expected a string at line 3 column 15"
    );
    // At the very start of the file the position says nothing.
    assert_eq!(
        decode::<Outer>("- a\n").unwrap_err(),
        "invalid type: sequence, expected struct Outer"
    );
}

#[test]
fn aliases_resolve_to_their_anchor() -> Result<(), String> {
    let got: BTreeMap<String, Vec<String>> = decode("a: &x [1.50, b]\nc: *x\n")?;
    assert_eq!(got["c"], ["1.50", "b"]);
    Ok(())
}

#[test]
fn a_merge_key_is_an_ordinary_key() -> Result<(), String> {
    let got: BTreeMap<String, BTreeMap<String, serde::de::IgnoredAny>> =
        decode("base: &b {x: 1}\nt: {<<: *b, y: 2}\n")?;
    assert_eq!(got["t"].keys().collect::<Vec<_>>(), ["<<", "y"]);
    Ok(())
}

#[test]
fn syntax_errors_and_duplicate_keys_are_refused_saying_where() {
    for (src, want) in [
        ("name: [p\n", "unclosed bracket '[' at line 1 column 7"),
        (
            "a: 1\n---\nb: 2\n",
            "a second document (a spec is one YAML document) at line 2 column 1",
        ),
        // A duplicate names the mapping's path and where it starts.
        ("name: p\nname: q\n", "duplicate entry with key \"name\""),
        (
            "name: p\nparams: {a: 1, a: 2}\n",
            "params: duplicate entry with key \"a\" at line 2 column 9",
        ),
        (
            "t:\n  - {x: 1}\n  - {1: a, 1: b}\n",
            "t[1]: duplicate entry with key 1 at line 3 column 5",
        ),
        ("{true: a, True: b}", "duplicate entry with key `true`"),
    ] {
        assert_eq!(parse(src).err().as_deref(), Some(want), "{src:?}");
    }
    // A quoted "1" is a string, a plain 1 a number: two keys.
    assert!(parse("{1: a, '1': b}").is_ok());
}

#[test]
fn large_documents_fit_the_budget() -> Result<(), String> {
    let mut src = String::from("tasks:\n");
    for i in 0..100_000 {
        src.push_str(&format!(
            "  - {{name: t{i}, command: [\"true\"], depends_on: [a, b]}}\n"
        ));
    }
    match parse(&src)?.map(|r| r.value) {
        Some(Value::Map(entries)) => match &entries[0].1.value {
            Value::Seq(tasks) => assert_eq!(tasks.len(), 100_000),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    Ok(())
}

#[test]
fn deep_nesting_is_refused() {
    let src = format!("{}{}", "[".repeat(200), "]".repeat(200));
    assert!(parse(&src).is_err());
}

#[test]
fn aliases_cannot_expand_without_bound() {
    // Each level doubles: 2^30 nodes from a few hundred bytes.
    let mut src = String::from("a0: &a0 [x, x]\n");
    for i in 1..30 {
        src.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}]\n", p = i - 1));
    }
    let err = parse(&src).unwrap_err();
    assert!(
        err.starts_with("aliases expand to more than 100000 nodes at line "),
        "{err}"
    );
    assert_eq!(
        parse("a: *nope\n").unwrap_err(),
        "while parsing node, found unknown anchor at line 1 column 4"
    );
}

#[test]
fn the_core_schema_decides_what_a_plain_scalar_is() {
    let kind = |src: &str| match parse(src).map(|n| n.map(|n| n.value)) {
        Ok(Some(Value::Scalar(kind, _))) => kind,
        other => panic!("{src}: {other:?}"),
    };
    for number in [
        "0", "-1", "+2", "0777", "1.50", ".5", "5.", "1e3", "-1.5E-3", "0x1F", "0o17", ".inf",
        "-.Inf", ".nan",
    ] {
        assert_eq!(kind(number), Kind::Number, "{number}");
    }
    for string in [
        "yes", "no", "on", "off", "1_000", "0x", "1e", "e3", ".", "1.2.3", "inf", "nan", "0b101",
        "'1'", "\"true\"", "!!str 1", "1 2",
    ] {
        assert_eq!(kind(string), Kind::String, "{string}");
    }
    assert_eq!(kind("TRUE"), Kind::Bool(true));
    assert_eq!(kind("False"), Kind::Bool(false));
}
