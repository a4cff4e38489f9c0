//! File classes: the kinds of file a window counts bytes by. `intel::classes` decides
//! which class a path is; configs, summaries and baselines name classes.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileClass {
    PmData,
    BrowserSecrets,
    SystemCredentials,
    SshKeys,
    Documents,
    RemovableMedia,
    Other,
}

impl FileClass {
    pub const ALL: [FileClass; 7] = [
        FileClass::PmData,
        FileClass::BrowserSecrets,
        FileClass::SystemCredentials,
        FileClass::SshKeys,
        FileClass::Documents,
        FileClass::RemovableMedia,
        FileClass::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FileClass::PmData => "pm_data",
            FileClass::BrowserSecrets => "browser_secrets",
            FileClass::SystemCredentials => "system_credentials",
            FileClass::SshKeys => "ssh_keys",
            FileClass::Documents => "documents",
            FileClass::RemovableMedia => "removable_media",
            FileClass::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<FileClass> {
        FileClass::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for FileClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
