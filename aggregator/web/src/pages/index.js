// Every page of the dashboard, by the name the URL uses (`#/NAME/...`), in navigation order.

export const PAGES = {};
