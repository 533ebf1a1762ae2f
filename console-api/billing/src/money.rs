//! Exact decimal money. Prices are decimals with at most [`MAX_PRICE_SCALE`] places;
//! amounts are computed exactly and rounded once, to the cent, per invoice line
//! (half away from zero), so a line's amount is what a person computes by hand.

use rust_decimal::{Decimal, RoundingStrategy};

/// Decimal places a unit price may have (a transaction may cost 0.00000125).
pub const MAX_PRICE_SCALE: u32 = 8;

/// No unit (a node-hour, a GiB-hour, a request) may cost more than this: a larger
/// figure is a typo, not a price.
pub const MAX_UNIT_PRICE: Decimal = Decimal::from_parts(10_000, 0, 0, false, 0);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    #[error("{0:?} is not a decimal number; write e.g. \"0.12\"")]
    NotANumber(String),
    #[error("a price cannot be negative")]
    Negative,
    #[error("a unit price above {MAX_UNIT_PRICE} is refused as absurd")]
    Absurd,
    #[error("at most {MAX_PRICE_SCALE} decimal places")]
    TooPrecise,
}

/// A unit price from its decimal text.
pub fn parse_unit_price(text: &str) -> Result<Decimal, PriceError> {
    let trimmed = text.trim();
    // Scientific notation and signs other than '-' are not prices people write.
    if trimmed.is_empty()
        || !trimmed
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return Err(PriceError::NotANumber(text.to_string()));
    }
    let price: Decimal = trimmed
        .parse()
        .map_err(|_| PriceError::NotANumber(text.to_string()))?;
    if price.is_sign_negative() && !price.is_zero() {
        return Err(PriceError::Negative);
    }
    if price > MAX_UNIT_PRICE {
        return Err(PriceError::Absurd);
    }
    if price.normalize().scale() > MAX_PRICE_SCALE {
        return Err(PriceError::TooPrecise);
    }
    Ok(price.normalize())
}

/// Rounded to the cent, half away from zero, always written with two places.
pub fn round_cents(amount: Decimal) -> Decimal {
    let mut cents = amount.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    cents.rescale(2);
    cents
}

/// `unit_price × base_quantity / base_per_unit`, rounded to the cent; `None` on overflow
/// (far beyond any real bill).
pub fn line_amount(unit_price: Decimal, base_quantity: i64, base_per_unit: u32) -> Option<Decimal> {
    let exact = unit_price
        .checked_mul(Decimal::from(base_quantity))?
        .checked_div(Decimal::from(base_per_unit))?;
    Some(round_cents(exact))
}

/// A base quantity in billed units, to six places (display only; amounts use the exact
/// base quantity).
pub fn billed_quantity(base_quantity: i64, base_per_unit: u32) -> Decimal {
    (Decimal::from(base_quantity) / Decimal::from(base_per_unit))
        .round_dp_with_strategy(6, RoundingStrategy::MidpointAwayFromZero)
        .normalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    #[test]
    fn prices_are_validated() {
        assert_eq!(parse_unit_price("0.12"), Ok(d("0.12")));
        assert_eq!(parse_unit_price("0.00000125"), Ok(d("0.00000125")));
        assert_eq!(parse_unit_price("0"), Ok(d("0")));
        assert_eq!(parse_unit_price("-0.01"), Err(PriceError::Negative));
        assert_eq!(parse_unit_price("1000000"), Err(PriceError::Absurd));
        assert_eq!(parse_unit_price("0.000000001"), Err(PriceError::TooPrecise));
        assert!(matches!(
            parse_unit_price("1e3"),
            Err(PriceError::NotANumber(_))
        ));
        assert!(matches!(
            parse_unit_price("twelve"),
            Err(PriceError::NotANumber(_))
        ));
        assert!(matches!(
            parse_unit_price(""),
            Err(PriceError::NotANumber(_))
        ));
    }

    #[test]
    fn amounts_are_exact_then_rounded_once() {
        // 0.12 per node-hour × 90 node-minutes = 0.18.
        assert_eq!(line_amount(d("0.12"), 5400, 3600), Some(d("0.18")));
        // 0.10 per hour for 1 minute = 0.001666… → 0.00.
        assert_eq!(line_amount(d("0.10"), 60, 3600), Some(d("0.00")));
        // Half a cent rounds away from zero.
        assert_eq!(line_amount(d("0.005"), 1, 1), Some(d("0.01")));
        // 3 × 0.1 is exactly 0.3 (it is not in binary floating point).
        assert_eq!(line_amount(d("0.1"), 3, 1), Some(d("0.30")));
        assert_eq!(billed_quantity(5400, 3600), d("1.5"));
        assert_eq!(round_cents(Decimal::ZERO).to_string(), "0.00");
        assert_eq!(round_cents(d("2")).to_string(), "2.00");
        assert_eq!(billed_quantity(100, 3600), d("0.027778"));
    }
}
