//! `drover logs -f`: what the followed chunks print as. With one task its
//! bytes as they come; with a whole run each line prefixed with its task
//! (a line is held until it is complete, so tasks never mix inside one).
//! A later attempt of a task starts with a `--- attempt N ---` line.

use std::collections::HashMap;

use drover_api::pb;

/// Turns followed chunks into output.
pub struct FollowPrinter {
    /// Prefix every line with its task (following a whole run).
    prefixed: bool,
    /// Per task: the attempt last seen and the start of a line not ended yet.
    tasks: HashMap<String, (u32, Vec<u8>)>,
    /// Without prefixes: whether the output ends at a line's end.
    at_line_start: bool,
}

impl FollowPrinter {
    pub fn new(prefixed: bool) -> Self {
        Self {
            prefixed,
            tasks: HashMap::new(),
            at_line_start: true,
        }
    }

    /// The bytes to write for one chunk.
    pub fn chunk(&mut self, chunk: &pb::LogChunk) -> Vec<u8> {
        let mut out = Vec::new();
        let (seen, partial) = self
            .tasks
            .entry(chunk.task.clone())
            .or_insert((0, Vec::new()));
        if chunk.attempt != *seen {
            *seen = chunk.attempt;
            if chunk.attempt > 1 {
                // The last line of the attempt before ends here.
                if self.prefixed {
                    end_line(&mut out, &chunk.task, partial);
                } else if !self.at_line_start {
                    out.push(b'\n');
                }
                let header = format!("--- attempt {} ---", chunk.attempt);
                if self.prefixed {
                    line(&mut out, &chunk.task, header.as_bytes());
                } else {
                    out.extend_from_slice(header.as_bytes());
                    out.push(b'\n');
                }
                self.at_line_start = true;
            }
        }
        if chunk.data.is_empty() {
            return out;
        }
        if !self.prefixed {
            self.at_line_start = chunk.data.ends_with(b"\n");
            out.extend_from_slice(&chunk.data);
            return out;
        }
        partial.extend_from_slice(&chunk.data);
        if let Some(last) = partial.iter().rposition(|&b| b == b'\n') {
            let rest = partial.split_off(last + 1);
            for l in partial[..last].split(|&b| b == b'\n') {
                line(&mut out, &chunk.task, l);
            }
            *partial = rest;
        }
        out
    }

    /// What is left at the end: lines that never got their newline.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.prefixed {
            let mut names: Vec<&String> = self.tasks.keys().collect();
            names.sort();
            for name in names {
                if let Some((_, partial)) = self.tasks.get(name) {
                    let mut partial = partial.clone();
                    end_line(&mut out, name, &mut partial);
                }
            }
            self.tasks.values_mut().for_each(|(_, p)| p.clear());
        } else if !self.at_line_start {
            out.push(b'\n');
            self.at_line_start = true;
        }
        out
    }
}

/// `<task> | <text>\n`.
fn line(out: &mut Vec<u8>, task: &str, text: &[u8]) {
    out.extend_from_slice(task.as_bytes());
    out.extend_from_slice(b" | ");
    out.extend_from_slice(text);
    out.push(b'\n');
}

/// Prints a line not ended yet, if any, as a line.
fn end_line(out: &mut Vec<u8>, task: &str, partial: &mut Vec<u8>) {
    if !partial.is_empty() {
        line(out, task, partial);
        partial.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `chunks` (task, attempt, data) print as, to the end.
    fn printed(prefixed: bool, chunks: &[(&str, u32, &str)]) -> String {
        let mut p = FollowPrinter::new(prefixed);
        let mut out = Vec::new();
        for (task, attempt, data) in chunks {
            out.extend(p.chunk(&pb::LogChunk {
                data: data.as_bytes().to_vec(),
                task: (*task).into(),
                attempt: *attempt,
            }));
        }
        out.extend(p.finish());
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn one_task_prints_its_bytes_and_marks_later_attempts() {
        let attempts = [
            ("train", 1, ""),
            ("train", 1, "epoch 1\nepo"),
            ("train", 1, "ch 2"),
            ("train", 2, ""),
            ("train", 2, "epoch 1\n"),
        ];
        let want = "epoch 1\nepoch 2\n--- attempt 2 ---\nepoch 1\n";
        assert_eq!(printed(false, &attempts), want);
        // A last line without its newline gets one at the end.
        assert_eq!(printed(false, &attempts[..3]), "epoch 1\nepoch 2\n");
    }

    #[test]
    fn a_whole_run_prefixes_complete_lines_with_their_task() {
        let out = printed(
            true,
            &[
                ("prepare", 1, "a\nb"),
                ("train[lr=0.03]", 1, "x\n"),
                ("prepare", 1, "c\n\nd"),
                ("train[lr=0.03]", 3, ""),
                ("train[lr=0.03]", 3, "y"),
            ],
        );
        assert_eq!(
            out,
            "prepare | a\n\
             train[lr=0.03] | x\n\
             prepare | bc\n\
             prepare | \n\
             train[lr=0.03] | --- attempt 3 ---\n\
             prepare | d\n\
             train[lr=0.03] | y\n",
            "{out}"
        );
    }
}
