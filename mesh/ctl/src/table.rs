//! Plain-text tables, the way kubectl prints them.
//!
//! Upper-case headers, left-aligned columns separated by three spaces, no
//! borders: easy to read, and easy to `grep` or `awk` in a lab script.

/// Rows of cells under a header; `render` pads every column to its widest cell.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// The space between two columns (kubectl uses three).
const GAP: &str = "   ";

impl Table {
    pub fn new<I, S>(headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Table {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Add a row; missing cells render empty, extra cells are kept (and get
    /// a column of their own).
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// The table as text, one line per row, each ending with `\n`.
    pub fn render(&self) -> String {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.headers.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0; columns];
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            for (i, cell) in line.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }

        let mut out = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut text = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = line.get(i).map(String::as_str).unwrap_or("");
                if i > 0 {
                    text.push_str(GAP);
                }
                text.push_str(cell);
                text.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
            }
            // Padding after the last column is noise in a terminal and in diffs.
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_columns_to_the_widest_cell() {
        let mut table = Table::new(["NAME", "VERSIONS", "ENDPOINTS"]);
        table.row(["helloworld-service", "v1,v2", "3/3"]);
        table.row(["guestbook-ui", "v1", "1/1"]);
        assert_eq!(
            table.render(),
            "NAME                 VERSIONS   ENDPOINTS\n\
             helloworld-service   v1,v2      3/3\n\
             guestbook-ui         v1         1/1\n"
        );
    }

    #[test]
    fn short_rows_and_wide_characters_line_up() {
        let mut table = Table::new(["A", "B"]);
        table.row(["✓", "x"]);
        table.row(["long"]);
        assert_eq!(table.render(), "A      B\n✓      x\nlong\n");
    }

    #[test]
    fn header_only_table_renders_the_header() {
        let table = Table::new(["NAME", "HOSTS"]);
        assert_eq!(table.render(), "NAME   HOSTS\n");
    }
}
