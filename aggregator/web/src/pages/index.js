// Every page of the dashboard, by the name the URL uses (`#/NAME/...`), in navigation order.

import overview from "./overview.js";
import host from "./host.js";
import alerts from "./alerts.js";
import logs from "./logs.js";
import query from "./query.js";
import dashboards from "./dashboards.js";

export const PAGES = { overview, host, alerts, logs, query, dashboards };
