//! `matrix:` — a task written once and run once per combination of the
//! listed values (a sweep). Each instance is named `<task>[<k>=<v>,…]`, in
//! the order the names were written, and sees its values as
//! `{{matrix.<name>}}`.

use std::collections::{BTreeMap, HashSet};

use super::raw::RawMatrix;
use super::template::is_param_name;
use super::validate::is_label_value;
use super::TaskError;

/// Most instances one task's matrix may expand into.
const MAX_INSTANCES: usize = 10_000;

/// A validated matrix: names in the order written, each with its values.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Matrix {
    axes: Vec<(String, Vec<String>)>,
}

/// One combination of values.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Instance {
    /// `[lr=0.1,epochs=10]`: appended to the task's name.
    pub suffix: String,
    pub values: BTreeMap<String, String>,
}

fn matrix_error(at: String, message: String) -> TaskError {
    TaskError::InvalidValue { field: at, message }
}

impl Matrix {
    pub fn parse(raw: &RawMatrix) -> Result<Self, TaskError> {
        if raw.0.is_empty() {
            return Err(matrix_error(
                "matrix".into(),
                "needs at least one name with a list of values".into(),
            ));
        }
        let mut axes = Vec::with_capacity(raw.0.len());
        let mut count: usize = 1;
        for (name, values) in &raw.0 {
            if !is_param_name(name) {
                return Err(matrix_error(
                    "matrix".into(),
                    format!(
                        "invalid name `{name}` (use letters, digits, `_` or `-`, starting with a letter or `_`)"
                    ),
                ));
            }
            let at = || format!("matrix.{name}");
            let values = values.as_deref().unwrap_or_default();
            if values.is_empty() {
                return Err(matrix_error(at(), "needs at least one value".into()));
            }
            let mut seen = HashSet::new();
            for value in values {
                if value.is_empty() || !is_label_value(value) {
                    return Err(matrix_error(
                        at(),
                        format!(
                            "value `{value}` cannot name an instance (use 1 to 63 letters, digits, `_`, `.` or `-`)"
                        ),
                    ));
                }
                if !seen.insert(value) {
                    return Err(matrix_error(
                        at(),
                        format!("value `{value}` is listed twice"),
                    ));
                }
            }
            count = count.saturating_mul(values.len());
            axes.push((name.clone(), values.to_vec()));
        }
        if count > MAX_INSTANCES {
            return Err(matrix_error(
                "matrix".into(),
                format!("{count} combinations; at most {MAX_INSTANCES} are allowed"),
            ));
        }
        Ok(Self { axes })
    }

    /// Every combination, the first name's values varying slowest.
    pub fn instances(&self) -> Vec<Instance> {
        let mut combos: Vec<Vec<&str>> = vec![Vec::new()];
        for (_, values) in &self.axes {
            combos = combos
                .into_iter()
                .flat_map(|combo| {
                    values.iter().map(move |v| {
                        let mut next = combo.clone();
                        next.push(v.as_str());
                        next
                    })
                })
                .collect();
        }
        combos
            .into_iter()
            .map(|combo| {
                let pairs: Vec<String> = self
                    .axes
                    .iter()
                    .zip(&combo)
                    .map(|((name, _), value)| format!("{name}={value}"))
                    .collect();
                Instance {
                    suffix: format!("[{}]", pairs.join(",")),
                    values: self
                        .axes
                        .iter()
                        .zip(combo)
                        .map(|((name, _), value)| (name.clone(), value.to_owned()))
                        .collect(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(axes: &[(&str, &[&str])]) -> RawMatrix {
        RawMatrix(
            axes.iter()
                .map(|(n, vs)| {
                    (
                        n.to_string(),
                        Some(vs.iter().map(|v| v.to_string()).collect()),
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn expands_the_cross_product_in_the_order_written() -> Result<(), TaskError> {
        let m = Matrix::parse(&raw(&[
            ("lr", &["0.001", "0.03"]),
            ("epochs", &["10", "30", "90"]),
        ]))?;
        let instances = m.instances();
        let suffixes: Vec<&str> = instances.iter().map(|i| i.suffix.as_str()).collect();
        assert_eq!(
            suffixes,
            [
                "[lr=0.001,epochs=10]",
                "[lr=0.001,epochs=30]",
                "[lr=0.001,epochs=90]",
                "[lr=0.03,epochs=10]",
                "[lr=0.03,epochs=30]",
                "[lr=0.03,epochs=90]",
            ]
        );
        assert_eq!(instances[4].values["lr"], "0.03");
        assert_eq!(instances[4].values["epochs"], "30");
        Ok(())
    }

    #[test]
    fn rejects_what_cannot_expand_or_name_an_instance() {
        let err = |r: RawMatrix| Matrix::parse(&r).map(|_| ()).unwrap_err().to_string();
        assert_eq!(
            err(raw(&[])),
            "matrix: needs at least one name with a list of values"
        );
        assert_eq!(
            err(raw(&[("1x", &["a"])])),
            "matrix: invalid name `1x` (use letters, digits, `_` or `-`, starting with a letter or `_`)"
        );
        assert_eq!(
            err(raw(&[("lr", &[])])),
            "matrix.lr: needs at least one value"
        );
        assert_eq!(
            err(raw(&[("lr", &["0.1", "0.1"])])),
            "matrix.lr: value `0.1` is listed twice"
        );
        assert_eq!(
            err(raw(&[("opt", &["a b"])])),
            "matrix.opt: value `a b` cannot name an instance (use 1 to 63 letters, digits, `_`, `.` or `-`)"
        );
        let hundred: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        let hundred: Vec<&str> = hundred.iter().map(String::as_str).collect();
        assert_eq!(
            err(raw(&[("a", &hundred), ("b", &hundred), ("c", &["x", "y"])])),
            "matrix: 20000 combinations; at most 10000 are allowed"
        );
    }
}
