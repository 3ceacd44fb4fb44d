-- Which product sold most this week? (the 7 days ending on the run's logical date)
SELECT p.name AS product,
       p.category AS category,
       SUM(s.units) AS units,
       ROUND(SUM(s.units * p.unit_price), 2) AS revenue
FROM sales AS s
JOIN products AS p ON p.product_id = s.product_id
WHERE s.sold_on BETWEEN '{{ macros.ds_add(ds, -6) }}' AND '{{ ds }}'
GROUP BY p.name, p.category
ORDER BY units DESC, product
