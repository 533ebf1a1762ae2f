//! Invoices: a price book applied to a period's usage, one line per network and meter.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::meter::Meter;
use crate::money;

/// Unit prices of one plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PriceBook {
    /// ISO 4217 code, e.g. `USD`.
    pub currency: String,
    /// Meters without a price are free.
    pub prices: BTreeMap<Meter, Decimal>,
}

/// A period's total of one meter on one network, in base units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageTotal {
    pub network_id: Uuid,
    pub network_name: String,
    pub meter: Meter,
    pub base_quantity: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceLine {
    pub network_id: Uuid,
    pub network_name: String,
    pub meter: Meter,
    /// In `unit`s, to six places.
    pub quantity: Decimal,
    pub unit: String,
    pub unit_price: Decimal,
    /// `unit_price × exact quantity`, rounded to the cent.
    pub amount: Decimal,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    /// `YYYY-MM`.
    pub period: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub plan: String,
    pub currency: String,
    pub lines: Vec<InvoiceLine>,
    /// The sum of the lines' amounts.
    pub total: Decimal,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("an amount overflowed: meter {meter} on network {network_id}")]
pub struct Overflow {
    pub network_id: Uuid,
    pub meter: &'static str,
}

/// The invoice for `usage`, lines ordered by network name, then meter. Zero-quantity
/// totals are left out.
pub fn build(
    period: String,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
    plan: String,
    book: &PriceBook,
    usage: &[UsageTotal],
) -> Result<Invoice, Overflow> {
    let mut lines = Vec::new();
    let mut total = Decimal::ZERO;
    for item in usage.iter().filter(|item| item.base_quantity != 0) {
        let unit_price = book
            .prices
            .get(&item.meter)
            .copied()
            .unwrap_or(Decimal::ZERO);
        let overflow = || Overflow {
            network_id: item.network_id,
            meter: item.meter.as_str(),
        };
        let amount = money::line_amount(unit_price, item.base_quantity, item.meter.base_per_unit())
            .ok_or_else(overflow)?;
        total = total.checked_add(amount).ok_or_else(overflow)?;
        lines.push(InvoiceLine {
            network_id: item.network_id,
            network_name: item.network_name.clone(),
            meter: item.meter,
            quantity: money::billed_quantity(item.base_quantity, item.meter.base_per_unit()),
            unit: item.meter.unit().to_string(),
            unit_price,
            amount,
        });
    }
    lines.sort_by(|a, b| {
        (&a.network_name, a.network_id, a.meter).cmp(&(&b.network_name, b.network_id, b.meter))
    });
    Ok(Invoice {
        period,
        period_start,
        period_end,
        plan,
        currency: book.currency.clone(),
        lines,
        total: money::round_cents(total),
    })
}

/// RFC 4180 CSV: a header, one row per line, and a final `total` row.
pub fn to_csv(invoice: &Invoice) -> String {
    let mut out = String::from(
        "period,network_id,network_name,meter,quantity,unit,unit_price,amount,currency\r\n",
    );
    for line in &invoice.lines {
        let row = [
            invoice.period.clone(),
            line.network_id.to_string(),
            line.network_name.clone(),
            line.meter.as_str().to_string(),
            line.quantity.to_string(),
            line.unit.clone(),
            line.unit_price.to_string(),
            format!("{:.2}", line.amount),
            invoice.currency.clone(),
        ];
        out.push_str(
            &row.iter()
                .map(|field| csv_field(field))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "{},,,total,,,,{:.2},{}\r\n",
        csv_field(&invoice.period),
        invoice.total,
        csv_field(&invoice.currency)
    ));
    out
}

/// Quotes a field when it holds a separator, a quote or a line break; a leading
/// formula character is neutralised so spreadsheets do not execute it.
fn csv_field(field: &str) -> String {
    let field = if field.starts_with(['=', '+', '@']) {
        format!("'{field}")
    } else {
        field.to_string()
    };
    if field.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::SizeClass;
    use std::str::FromStr;

    fn d(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    #[test]
    fn lines_are_priced_exactly_and_summed() {
        let book = PriceBook {
            currency: "USD".into(),
            prices: BTreeMap::from([
                (Meter::NodeHours(SizeClass::Standard), d("0.12")),
                (Meter::StorageGibHours, d("0.0002")),
                (Meter::Transactions, d("0.00001")),
            ]),
        };
        let a = Uuid::from_u128(1);
        let usage = [
            UsageTotal {
                network_id: a,
                network_name: "pay,ments".into(),
                meter: Meter::NodeHours(SizeClass::Standard),
                base_quantity: 12 * 3600 + 8 * 1800,
            },
            UsageTotal {
                network_id: a,
                network_name: "pay,ments".into(),
                meter: Meter::StorageGibHours,
                base_quantity: 120 * 3600 * 100,
            },
            UsageTotal {
                network_id: a,
                network_name: "pay,ments".into(),
                meter: Meter::Transactions,
                base_quantity: 123_456,
            },
            UsageTotal {
                network_id: a,
                network_name: "pay,ments".into(),
                meter: Meter::RpcRequests,
                base_quantity: 0,
            },
        ];
        let start = DateTime::from_timestamp(0, 0).unwrap();
        let invoice = build("2026-11".into(), start, start, "team".into(), &book, &usage).unwrap();
        // 16 node-hours × 0.12 = 1.92; 12,000 GiB-h × 0.0002 = 2.40; 1.23456 → 1.23.
        let amounts: Vec<Decimal> = invoice.lines.iter().map(|l| l.amount).collect();
        assert_eq!(amounts, vec![d("1.92"), d("2.40"), d("1.23")]);
        assert_eq!(invoice.total, d("5.55"));
        assert_eq!(invoice.lines[0].quantity, d("16"));
        let csv = to_csv(&invoice);
        assert!(csv.contains("\"pay,ments\",node_hours.standard,16,node-hour,0.12,1.92,USD"));
        assert!(csv.ends_with("2026-11,,,total,,,,5.55,USD\r\n"));
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
    }
}
