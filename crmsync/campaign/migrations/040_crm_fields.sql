-- The declared type of every CRM field the change sources read, as the connector's describe reports it, in
-- crmsync's neutral kinds (crmsync/values.py). The streams and drift repair compare and convert values by these
-- kinds (and the Campaign catalog's), never by what a value looks like. Written by the pollers after each
-- describe; read by the streams every few seconds.
CREATE TABLE IF NOT EXISTS crmsync.crm_fields (
    account     text NOT NULL,
    object      text NOT NULL,
    field       text NOT NULL,
    kind        text NOT NULL,
    crm_type    text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, object, field)
);
