//! Keyset (cursor) pagination. Ids are UUIDv7, so ordering by id is ordering by
//! creation time, and "the page after id X" is `WHERE id > X ORDER BY id LIMIT n` —
//! stable under concurrent inserts and index-only, unlike `OFFSET`.

use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::error::ApiError;

pub const DEFAULT_LIMIT: u64 = 50;
pub const MAX_LIMIT: u64 = 200;

#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1..=200 (default 50).
    pub limit: Option<u64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A validated page request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: u64,
    pub after: Option<Uuid>,
}

impl PageQuery {
    pub fn parse(&self) -> Result<PageRequest, ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::bad_request(
                "invalid_limit",
                format!("limit must be within 1..={MAX_LIMIT}"),
            ));
        }
        let after = match &self.cursor {
            None => None,
            Some(cursor) => Some(Uuid::parse_str(cursor).map_err(|_| {
                ApiError::bad_request(
                    "invalid_cursor",
                    "cursor must be the next_cursor of a previous page",
                )
            })?),
        };
        Ok(PageRequest { limit, after })
    }
}

/// Splits `limit + 1` fetched rows into a page and the cursor of the next one.
pub fn finish<T>(
    mut rows: Vec<T>,
    limit: u64,
    id: impl Fn(&T) -> Uuid,
) -> (Vec<T>, Option<String>) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() > limit {
        rows.truncate(limit);
        let next = rows.last().map(|row| id(row).to_string());
        (rows, next)
    } else {
        (rows, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_cursors_are_validated() {
        assert_eq!(PageQuery::default().parse().unwrap().limit, DEFAULT_LIMIT);
        let too_big = PageQuery {
            limit: Some(201),
            cursor: None,
        };
        assert_eq!(too_big.parse().unwrap_err().code, "invalid_limit");
        let zero = PageQuery {
            limit: Some(0),
            cursor: None,
        };
        assert_eq!(zero.parse().unwrap_err().code, "invalid_limit");
        let bad_cursor = PageQuery {
            limit: None,
            cursor: Some("nope".into()),
        };
        assert_eq!(bad_cursor.parse().unwrap_err().code, "invalid_cursor");
    }

    #[test]
    fn finish_reports_a_cursor_only_when_more_rows_exist() {
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let (page, next) = finish(ids.clone(), 2, |id| *id);
        assert_eq!(page.len(), 2);
        assert_eq!(next, Some(ids[1].to_string()));
        let (page, next) = finish(ids.clone(), 3, |id| *id);
        assert_eq!(page.len(), 3);
        assert_eq!(next, None);
    }
}
