"""Result records: what drivers produce and what travels from tests to the reports."""
