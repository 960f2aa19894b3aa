//! [`plan_table!`](crate::plan_table): the declaration of a plan table as a serde-derived
//! struct, each key once.

/// Declares a table of a plan: a serde-derived struct whose fields are the table's keys, all
/// optional, and a `KEYS` constant of [`Key`](crate::plan::Key)s that says what help messages
/// show for each. Each key is one line:
///
/// ```text
/// "key-name" field: ValueType = "sample line" ("what leaving it out means"),
/// ```
///
/// where the sample line and the advice are optional. The value type checks the value: the
/// value types of [`plan`](crate::plan) ([`Count`](crate::plan::Count),
/// [`Seconds`](crate::plan::Seconds), [`Size`](crate::plan::Size),
/// [`Flag`](crate::plan::Flag), [`Text`](crate::plan::Text)) give the messages of the core,
/// and [`ByHand`](crate::plan::ByHand) leaves the value to be read by hand as its key is met
/// ([`Table::read_with`](crate::plan::Table::read_with)). The crate using the macro needs
/// `serde` (with `derive`) as a dependency.
///
/// ```
/// use orchestrator_core::plan::{Count, Flag, U32_MAX};
///
/// orchestrator_core::plan_table! {
///     /// The `[ssh]` table of a made-up runner.
///     pub struct SshTable {
///         "port" port: Count<1, 65535> = "port = 22",
///         "strict-host-keys" strict_host_keys: Flag = "strict-host-keys = false",
///         "connections" connections: Count<1, U32_MAX> = "connections = 4" ("to open one per test"),
///     }
/// }
///
/// assert_eq!(SshTable::KEYS[1].name, "strict-host-keys");
/// assert_eq!(SshTable::KEYS[2].unset, Some("to open one per test"));
/// ```
#[macro_export]
macro_rules! plan_table {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $key:literal $field:ident: $ty:ty $(= $example:literal $(($unset:literal))?)?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default, serde::Deserialize)]
        #[serde(default)]
        $vis struct $name {
            $(
                #[serde(rename = $key)]
                $field: Option<$ty>,
            )*
        }

        impl $name {
            /// The keys of the table, in order, with what help messages show for them.
            $vis const KEYS: &'static [$crate::plan::Key] = &[
                $(
                    $crate::plan::Key {
                        name: $key,
                        example: $crate::plan_table!(@opt $($example)?),
                        unset: $crate::plan_table!(@opt $($($unset)?)?),
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
