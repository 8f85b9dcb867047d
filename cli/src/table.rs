//! Aligned text tables for listings: a header row in capitals, each column as wide
//! as its widest cell, two spaces between columns, no trailing blanks.

/// A table being filled.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    /// Add a row; an empty cell is shown as `-`, so that columns stay readable.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(
            cells
                .into_iter()
                .map(|c| if c.is_empty() { "-".into() } else { c })
                .collect(),
        );
    }

    /// The table as text, one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; cols];
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.extend(std::iter::repeat_n(' ', widths[i] - cell.chars().count()));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Print it on stdout.
    pub fn print(&self) {
        print!("{}", self.render());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_their_widest_cell() {
        let mut t = Table::new(&["NAME", "GROUPS", "CREATED"]);
        t.row(vec!["alice".into(), "ops,dev".into(), "3m ago".into()]);
        t.row(vec!["bob-the-builder".into(), "".into(), "2d ago".into()]);
        t.row(vec!["zoë".into(), "admins".into(), "".into()]);
        assert_eq!(
            t.render(),
            "NAME             GROUPS   CREATED\n\
             alice            ops,dev  3m ago\n\
             bob-the-builder  -        2d ago\n\
             zoë              admins   -\n"
        );
    }

    #[test]
    fn an_empty_listing_is_its_header() {
        assert_eq!(Table::new(&["ID", "NAME"]).render(), "ID  NAME\n");
    }
}
