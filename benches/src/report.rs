//! Results: one row of the table and one JSON object per scenario.

use serde::Serialize;
use serde_json::{Map, Value};

/// A target from the benchmark issue and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub what: String,
    /// NaN (null in JSON) when not reached.
    #[serde(serialize_with = "finite_or_null")]
    pub value: f64,
    /// `<=` or `>=`.
    pub op: &'static str,
    pub limit: f64,
    pub met: bool,
}

impl Target {
    pub fn at_most(what: &str, value: f64, limit: f64) -> Self {
        Self {
            what: what.into(),
            value,
            op: "<=",
            limit,
            met: value <= limit,
        }
    }

    /// A target the run could not reach at all (e.g. the spec was refused):
    /// no value, missed.
    pub fn not_reached(what: &str, op: &'static str, limit: f64) -> Self {
        Self {
            what: what.into(),
            value: f64::NAN,
            op,
            limit,
            met: false,
        }
    }

    pub fn at_least(what: &str, value: f64, limit: f64) -> Self {
        Self {
            what: what.into(),
            value,
            op: ">=",
            limit,
            met: value >= limit,
        }
    }
}

fn finite_or_null<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_finite() {
        s.serialize_f64(*v)
    } else {
        s.serialize_none()
    }
}

/// What one scenario measured. A scenario that could not run says why in
/// `error` and still reports whatever it measured before that.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub scenario: String,
    /// True when agents were simulated (no process was started for a task).
    pub simulated: bool,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Sizes and settings.
    pub params: Map<String, Value>,
    pub metrics: Map<String, Value>,
    pub targets: Vec<Target>,
    /// One line for the table.
    #[serde(skip)]
    pub summary: String,
}

impl Outcome {
    pub fn new(scenario: &str, simulated: bool) -> Self {
        Self {
            scenario: scenario.into(),
            simulated,
            ok: true,
            error: None,
            params: Map::new(),
            metrics: Map::new(),
            targets: Vec::new(),
            summary: String::new(),
        }
    }

    pub fn param(&mut self, k: &str, v: impl Into<Value>) -> &mut Self {
        self.params.insert(k.into(), v.into());
        self
    }

    pub fn metric(&mut self, k: &str, v: impl Serialize) -> &mut Self {
        self.metrics
            .insert(k.into(), serde_json::to_value(v).unwrap_or(Value::Null));
        self
    }

    pub fn fail(&mut self, e: impl std::fmt::Display) {
        self.ok = false;
        // One line in the table; the JSON keeps the whole chain.
        self.error = Some(e.to_string());
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// The human-readable table.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut rows = vec![[
        "scenario".to_string(),
        "result".to_string(),
        "targets".to_string(),
    ]];
    for o in outcomes {
        let name = if o.simulated {
            format!("{} [SIMULATED agents]", o.scenario)
        } else {
            o.scenario.clone()
        };
        let result = match &o.error {
            Some(e) => {
                let first = e.lines().next().unwrap_or_default();
                let short: String = first.chars().take(110).collect();
                if o.summary.is_empty() {
                    format!("FAILED: {short}")
                } else {
                    format!("{}; FAILED: {short}", o.summary)
                }
            }
            None => o.summary.clone(),
        };
        let targets = o
            .targets
            .iter()
            .map(|t| {
                format!(
                    "{} {} {} {}: {}",
                    t.what,
                    fmt_num(t.value),
                    t.op,
                    fmt_num(t.limit),
                    if t.met { "met" } else { "MISSED" }
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        rows.push([name, result, targets]);
    }
    let w: Vec<usize> = (0..3)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        out.push_str(&format!(
            "{:<w0$} | {:<w1$} | {}\n",
            r[0],
            r[1],
            r[2],
            w0 = w[0],
            w1 = w[1]
        ));
        if i == 0 {
            out.push_str(&format!(
                "{}-+-{}-+-{}\n",
                "-".repeat(w[0]),
                "-".repeat(w[1]),
                "-".repeat(w[2].max(7))
            ));
        }
    }
    out
}

pub fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        "n/a".into()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;
    use super::*;

    #[test]
    fn failures_show_in_table_and_json() -> TestResult {
        let mut o = Outcome::new("scale", true);
        o.param("tasks", 100_000);
        o.fail("submit refused: too large\nmore detail");
        o.targets.push(Target::at_most("submit s", 3.0, 2.0));
        o.targets
            .push(Target::not_reached("tasks/s", ">=", 10_000.0));
        let t = table(&[o.clone()]);
        assert!(t.contains("scale [SIMULATED agents]"));
        assert!(t.contains("FAILED: submit refused: too large"));
        assert!(t.contains("MISSED"));
        let v: Value = serde_json::from_str(&o.json())?;
        assert_eq!(v["ok"], false);
        assert_eq!(v["simulated"], true);
        assert_eq!(v["params"]["tasks"], 100_000);
        assert!(v["error"]
            .as_str()
            .ok_or("no error field")?
            .contains("more detail"));
        assert!(t.contains("tasks/s n/a >= 10000: MISSED"));
        assert!(v["targets"][1]["value"].is_null());
        assert_eq!(v["targets"][1]["met"], false);
        Ok(())
    }
}
