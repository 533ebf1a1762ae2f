//! Test environments for Trellis (see docs/development.md).
