"""An ERP-style export for `make run` and `make demo`: accounts and contacts as semicolon CSV in Azurite.

Deterministic (seeded), with a known number of bad rows of each kind, so the demo can check the counts:
every valid row must land and every bad one must be dead-lettered.
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass, field

ACCOUNT_HEADER = ["CustomerNo", "Name", "Phone", "Employees", "Revenue", "CreditHold", "Category", "HoldSince"]
CONTACT_HEADER = ["Email", "FirstName", "LastName", "CustomerNo"]
FIRST = ["Anna", "Ben", "Chloé", "David", "Eva", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kaja", "Liam"]
LAST = ["Schmidt", "Müller", "O'Brien", "Rossi", "Dubois", "Nowak", "Jensen", "García", "Smith", "Kowalski"]
BAD_ACCOUNT_KINDS = ("BadDate", "MissingKey", "UnknownOptionLabel", "TooLong")


@dataclass
class Seed:
    accounts: int
    contacts: int
    bad_accounts: dict[str, int] = field(default_factory=dict)  # code -> rows
    orphan_contacts: int = 0  # contacts whose account is missing or invalid: refused by Dataverse

    @property
    def valid_accounts(self) -> int:
        return self.accounts - sum(self.bad_accounts.values())

    @property
    def valid_contacts(self) -> int:
        return self.contacts - self.orphan_contacts


def _csv(header: list[str], rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=";")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8-sig")  # Excel-style BOM, as ERP exports often have


def erp_export(
    accounts: int = 10_000, contacts: int = 30_000, bad: int = 300, seed: int = 42
) -> tuple[Seed, bytes, bytes]:
    rng = random.Random(seed)
    result = Seed(accounts, contacts)
    bad_rows = set(rng.sample(range(accounts), bad))
    account_rows: list[list[str]] = []
    invalid_numbers: set[str] = set()
    for i in range(accounts):
        number = f"C{i:06}"
        suffix = rng.choice(["GmbH", "AG", "Ltd", "SARL", "Srl"])
        row = [
            number,
            f"{rng.choice(LAST)} {suffix} {i}",
            f"+49 30 {rng.randint(100000, 999999)}",
            str(rng.randint(1, 5000)),
            f"{rng.randint(1000, 9_999_999)},{rng.randint(0, 99):02}",
            rng.choice(["ja", "nein", ""]),
            rng.choice(["Standard", "Preferred Customer"]),
            f"{rng.randint(1, 28):02}.{rng.randint(1, 12):02}.2025",
        ]
        if i in bad_rows:
            kind = BAD_ACCOUNT_KINDS[len(invalid_numbers) % len(BAD_ACCOUNT_KINDS)]
            invalid_numbers.add(number)
            result.bad_accounts[kind] = result.bad_accounts.get(kind, 0) + 1
            if kind == "BadDate":
                row[7] = "31.02.2025"
            elif kind == "MissingKey":
                row[0] = ""
            elif kind == "UnknownOptionLabel":
                row[6] = "Platinum"
            else:
                row[1] = "X" * 200
        account_rows.append(row)
    contact_rows = []
    for j in range(contacts):
        parent = f"C{rng.randrange(accounts):06}"
        first, last = rng.choice(FIRST), rng.choice(LAST)
        contact_rows.append([f"{first}.{j}@example.com".lower(), first, last, parent])
        if parent in invalid_numbers:
            result.orphan_contacts += 1  # its account was dead-lettered, so Dataverse refuses the lookup
    return result, _csv(ACCOUNT_HEADER, account_rows), _csv(CONTACT_HEADER, contact_rows)
