//! The declaration of a derived plan table: [`plan_table!`] declares each key once, with its
//! value type (which checks the value), the sample line help messages show and what leaving
//! the key out means.

use serde::de::DeserializeOwned;

use super::value::keys_of;

/// What help messages say about one key of a derived table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Doc {
    /// A sample line: `timeout = "30s"`.
    pub(super) example: Option<&'static str>,
    /// What leaving the key out means, as "to ..." advice.
    pub(super) unset: Option<&'static str>,
}

/// A table declared with [`plan_table!`].
pub(super) trait Documented: DeserializeOwned {
    /// The [`Doc`] of each key, in the order of the struct's fields.
    const DOCS: &'static [Doc];
}

/// The [`Doc`] of `key` in table `T`.
pub(super) fn doc_of<T: Documented>(key: &str) -> Option<&'static Doc> {
    let index = keys_of::<T>().iter().position(|k| *k == key)?;
    T::DOCS.get(index)
}

/// Declares a plan table: a serde-derived struct whose fields are the table's keys (in
/// kebab-case, all optional), each written as
/// `field: ValueType = "sample line" ("what leaving it out means")`, the last two optional.
macro_rules! plan_table {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $field:ident: $ty:ty $(= $example:literal $(($unset:literal))?)?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default, serde::Deserialize)]
        #[serde(default, rename_all = "kebab-case")]
        $vis struct $name {
            $( $field: Option<$ty>, )*
        }

        impl $crate::plan::parse::schema::Documented for $name {
            const DOCS: &'static [$crate::plan::parse::schema::Doc] = &[
                $(
                    $crate::plan::parse::schema::Doc {
                        example: plan_table!(@opt $($example)?),
                        unset: plan_table!(@opt $($($unset)?)?),
                    },
                )*
            ];
        }
    };
    (@opt) => {
        None
    };
    (@opt $value:literal) => {
        Some($value)
    };
}
